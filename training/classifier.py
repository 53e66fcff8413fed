"""The evaluation classifier, trained on the train split only (held-out digits stay unseen)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from genserve.nets import save_checkpoint
from genserve.nets.classifier import Classifier, ClassifierConfig
from genserve.training.data import mnist_splits, to_model_range
from genserve.training.loop import seed_everything

log = logging.getLogger(__name__)


@dataclass
class ClassifierTrainConfig:
    net: ClassifierConfig = field(default_factory=ClassifierConfig)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    max_shift: int = 2  # random translation augmentation, in pixels
    seed: int = 0


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill = background -1)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return (pred == y).float().mean().item()


def train_classifier(out: Path, config: ClassifierTrainConfig) -> float:
    """Train, write the checkpoint with its held-out accuracy, and return that accuracy."""
    generator = seed_everything(config.seed)
    train, held_out = mnist_splits()
    x, y = to_model_range(train.images), torch.from_numpy(train.labels)
    xh, yh = to_model_range(held_out.images), torch.from_numpy(held_out.labels)
    model = Classifier(config.net)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = len(x) // config.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps_per_epoch)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"classifier epoch {epoch + 1}/{config.epochs}", leave=False)
        for i in bar:
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            loss = F.cross_entropy(model(random_shift(x[idx], config.max_shift, generator)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        log.info("epoch %d: held-out accuracy %.4f", epoch + 1, accuracy(model, xh, yh))
    acc = accuracy(model, xh, yh)
    extra = {"train": dataclasses.asdict(config), "held_out_accuracy": round(acc, 4), "held_out_size": len(xh)}
    save_checkpoint(out, "classifier", model, config.net, extra)
    return acc
