"""PixelCNN training: maximum likelihood of the discrete digits, a 256-way cross-entropy per pixel
(no dequantization: the softmax is over the levels themselves), Adam with a linear warm-up then
cosine decay, gradient-norm clipping; the served network is an EMA of the trained one. Each
checkpoint records the held-out bits per dimension, the exact -log2 P(image) / 784 averaged over
the held-out digits. Sampling costs 784 step calls, so one small grid (one digit per class) is
drawn only at the end.

A guided net (``net.guided``) also learns the unconditional model: each image's label becomes
the null label with probability ``label_dropout`` (Ho & Salimans 2022). ``init_from`` starts from
a trained checkpoint; a guided net started from an unguided one gets the mean of the classes'
embedding rows as its null label's."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.pixelcnn import PixelCNN, PixelCNNConfig, PixelCNNStep, sample
from genserve.training import EVAL_SEED
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.loop import EMA, run_steps, save_sample_grid, seed_everything

log = logging.getLogger(__name__)


@dataclass
class PixelCNNTrainConfig:
    net: PixelCNNConfig = field(default_factory=PixelCNNConfig)
    steps: int = 4000
    batch_size: int = 16  # 16 x 784 pixel targets a step; a step costs half of a batch of 32 on one core
    lr: float = 1.5e-3
    warmup_steps: int = 100
    min_lr_fraction: float = 0.05  # the cosine decay ends at lr times this
    clip_grad_norm: float = 1.0
    ema_decay: float = 0.999  # 0: serve the trained weights themselves
    label_dropout: float = 0.1  # guided nets only: P(label -> null label)
    init_from: str = ""  # a PixelCNN checkpoint folder to start from
    seed: int = 0
    checkpoint_every: int = 400


def learning_rate(config: PixelCNNTrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``lr * min_lr_fraction``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    floor = config.min_lr_fraction
    return config.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def nll_bits(net: PixelCNN, images_uint8: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """uint8 (B, H, W) -> mean -log2 P(pixel | pixels before it) over the batch's pixels (a scalar)."""
    logits = net(to_model_range(images_uint8.numpy()), labels)  # (B, levels, H, W)
    return F.cross_entropy(logits, images_uint8.long()) / math.log(2.0)


@torch.no_grad()
def bits_per_dim(net: PixelCNN, images_uint8: np.ndarray, labels: np.ndarray | None, batch_size: int = 100) -> float:
    """The model's -log2 P(image) / (H W), the exact discrete likelihood, averaged over ``images_uint8``
    (N, H, W) with their ``labels`` (N,) (ignored by an unconditional net)."""
    images = torch.from_numpy(np.asarray(images_uint8, dtype=np.uint8))
    conditional = net.config.num_classes is not None and labels is not None
    label_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64) if conditional else None
    total = 0.0
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        y = label_t[i : i + batch_size] if label_t is not None else None
        total += nll_bits(net.eval(), batch, y).item() * len(batch)
    return total / len(images)


def init_from(net: PixelCNN, folder: Path) -> None:
    """Copy every weight of the PixelCNN checkpoint in ``folder`` into ``net``. A class embedding
    one row short (an unguided source, a guided net) gets the classes' mean as its null row."""
    source, _ = load_checkpoint(folder)
    state = net.state_dict()
    theirs = source.state_dict()
    if set(theirs) != set(state):
        raise ValueError(f"{folder} does not fit this PixelCNN: weights {sorted(set(theirs) ^ set(state))} differ")
    for name, value in theirs.items():
        target = state[name]
        if value.shape == target.shape:
            target.copy_(value)
        elif (
            net.null_label is not None and value.shape[0] + 1 == target.shape[0] and value.shape[1:] == target.shape[1:]
        ):
            target[:-1] = value
            target[-1] = value.mean(dim=0)
        else:
            raise ValueError(
                f"{folder} does not fit this PixelCNN: {name} is {tuple(value.shape)}, not {tuple(target.shape)}"
            )
    net.load_state_dict(state)
    log.info("initialised from %s", folder)


def train_pixelcnn(out: Path, config: PixelCNNTrainConfig) -> Path:
    generator = seed_everything(config.seed)
    train, held_out = mnist_splits()
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)  # (N, 28, 28) uint8, (N,)
    conditional = config.net.num_classes is not None
    net = PixelCNN(config.net).train()
    if config.init_from:
        init_from(net, Path(config.init_from))
    log.info("PixelCNN with %.3fM parameters", sum(p.numel() for p in net.parameters()) / 1e6)
    ema = EMA(net, config.ema_decay) if config.ema_decay > 0 else None
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    batch_iter = batches(images, config.batch_size, generator)

    def served() -> PixelCNN:
        return ema.model if ema is not None else net

    def step_fn(step: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = learning_rate(config, step)
        idx = next(batch_iter)
        y = labels[idx] if conditional else None
        if net.null_label is not None:
            drop = torch.rand(len(idx), generator=generator) < config.label_dropout
            y = torch.where(drop, torch.full_like(y, net.null_label), y)
        loss = nll_bits(net.train(), images[idx], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_grad_norm)
        opt.step()
        if ema is not None:
            ema.update(net, step)
        return {"bpd": loss.item(), "grad": grad_norm.item()}

    def checkpoint_fn(step: int, seconds: float) -> None:
        bpd = bits_per_dim(served(), held_out.images, held_out.labels)
        log.info("step %d: held-out bits/dim %.4f", step, bpd)
        extra = {
            "train": asdict(config),
            "step": step,
            "train_seconds_this_run": round(seconds, 1),
            "held_out_bits_per_dim": round(bpd, 4),
        }
        save_checkpoint(out, "pixelcnn", served(), config.net, extra)
        if step == config.steps:  # 784 step calls: one digit per class, at the end only
            grid = sample(PixelCNNStep(served().eval()), np.arange(10), seed=EVAL_SEED)  # guidance 1
            save_sample_grid(out, grid, step, nrow=10)

    state = {"net": net, "opt": opt, **({"ema": ema.model} if ema is not None else {})}
    run_steps(out, "pixelcnn", config.steps, generator, state, step_fn, checkpoint_fn, config.checkpoint_every)
    return out
