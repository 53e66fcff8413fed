"""DDPM training (Ho et al. 2020): ε-prediction, uniform t, simple MSE loss, EMA weights.

With ``unet.num_classes`` set the UNet is class-conditional and trained for classifier-free
guidance (Ho & Salimans 2022): each image's label is replaced by the null label with
probability ``label_dropout``, so one network learns both ε(x, t, y) and ε(x, t). ``init_from``
starts from another UNet checkpoint (an unconditional one: the class embedding starts at zero).

With ``guide_from`` set as well, training distils autoguidance into the network (guidance
distillation, Meng et al. 2023, of the guidance of Karras et al. 2024): the target is no longer
the noise drawn but the guided prediction of two frozen nets on the same x_t,
ε_guide + w (ε_teacher − ε_guide), where the teacher is the ``init_from`` model and the guide a
smaller, shorter-trained UNet of the same data. The student starts as the teacher and ends as one
network that samples like the guided pair, at the cost of one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from genserve import images, schedule
from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.step import AutoGuidedDiffusionStep, sample, step_module
from genserve.nets.unet import UNet, UNetConfig
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.loop import EMA, load_state, save_state, seed_everything, warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class DDPMTrainConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    steps: int = 8000
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 1000
    label_dropout: float = 0.1  # class-conditional only: P(label -> null label)
    class_lr_scale: float = 10.0  # class-conditional only: the class embedding's learning rate / lr
    init_from: str = ""  # a UNet checkpoint folder to start from; its missing weights stay at init
    grid_steps: int = 50  # DDIM steps of the periodic sample grids
    grid_guidance: float = 3.0  # class-conditional only: guidance scale of the periodic sample grids
    guide_from: str = ""  # unconditional only: a weaker UNet checkpoint; distil autoguidance (needs init_from)
    guide_scale: float = 2.0  # w of the distilled target ε_guide + w (ε_teacher − ε_guide)


def learning_rate(config: DDPMTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` at ``steps``."""
    return warmup_cosine(step, config.steps, config.lr, config.warmup, config.min_lr)


def train_ddpm(out: Path, config: DDPMTrainConfig) -> Path:
    generator = seed_everything(config.seed)
    diffusion = schedule.default_diffusion()

    train, _ = mnist_splits()
    data = to_model_range(train.images).contiguous(memory_format=torch.channels_last)  # (N, 1, 28, 28)
    labels = torch.from_numpy(train.labels)
    model = UNet(config.unet)
    if config.init_from:
        _init_from(model, Path(config.init_from))
    model = model.to(memory_format=torch.channels_last)
    conditional = model.null_label is not None
    target_fn = _guided_target(config, model) if config.guide_from else None  # before a resume replaces the weights
    ema = EMA(model, config.ema_decay)
    opt = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=0.0)
    out.mkdir(parents=True, exist_ok=True)
    start = load_state(out, generator, model=model, ema=ema.model, opt=opt)
    log.info("UNet with %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)

    t0 = time.time()
    model.train()
    bar = tqdm(total=config.steps, initial=start, desc="ddpm", unit="step", smoothing=0.05)
    batch_iter = batches(data, config.batch_size, generator)
    for step in range(start, config.steps):
        rows = next(batch_iter)
        x0 = data[rows]  # (B, 1, 28, 28)
        t = torch.randint(0, diffusion.num_timesteps, (len(x0),), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = diffusion.q_sample(x0, t, eps)  # (B, 1, 28, 28)
        if conditional:
            y = labels[rows]
            drop = torch.rand(len(y), generator=generator) < config.label_dropout
            loss = F.mse_loss(model(x_t, t, torch.where(drop, model.null_label, y)), eps)
        else:
            loss = F.mse_loss(model(x_t, t), eps if target_fn is None else target_fn(x_t, t))
        for group in opt.param_groups:
            group["lr"] = learning_rate(config, step) * group.get("lr_scale", 1.0)  # none in older states
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        ema.update(model, step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{learning_rate(config, step):.1e}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            _checkpoint(out, config, ema.model, done, time.time() - t0)
            save_state(out, done, generator, model=model, ema=ema.model, opt=opt)
        if done % config.sample_every == 0 or done == config.steps:
            _sample_grid(out, ema.model, done, config)
    bar.close()
    return out


def _param_groups(model: UNet, config: DDPMTrainConfig) -> list[dict]:
    """One group, or two for a conditional UNet: the class embedding learns ``class_lr_scale``
    times faster (a fine-tune starts every other weight trained and the classes from scratch)."""
    if model.null_label is None:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    embed = list(model.class_embed.parameters())
    rest = [p for p in model.parameters() if all(p is not e for e in embed)]
    return [{"params": rest, "lr_scale": 1.0}, {"params": embed, "lr_scale": config.class_lr_scale}]


def _init_from(model: UNet, folder: Path) -> None:
    """Copy every weight of the UNet checkpoint in ``folder`` into ``model``; only weights the
    source lacks (a class embedding) may stay at their init."""
    source, _ = load_checkpoint(folder)
    try:
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    except RuntimeError as exc:  # shapes differ
        raise ValueError(f"{folder} does not fit this UNet: {exc}") from None
    if unexpected or any(not k.startswith("class_embed.") for k in missing):
        raise ValueError(f"{folder} does not fit this UNet: missing {missing}, unexpected {unexpected}")
    log.info("initialised from %s (left at init: %s)", folder, missing or "nothing")


def _guided_target(config: DDPMTrainConfig, start: UNet):
    """(x_t, t) -> ε_guide + w (ε_teacher − ε_guide) (``AutoGuidedDiffusionStep.eps``): the teacher
    is a frozen copy of ``start``, the student as ``init_from`` initialised it, and the guide the
    ``guide_from`` UNet, both in eval mode."""
    if not config.init_from:
        raise ValueError("guide_from needs init_from: the teacher the student starts as")
    if start.null_label is not None:
        raise ValueError("guide_from distils autoguidance into an unconditional UNet; this one is class-conditional")
    guide, _ = load_checkpoint(Path(config.guide_from))
    teacher, guide = (net.eval().requires_grad_(False) for net in (copy.deepcopy(start), guide))
    log.info(
        "distilling autoguidance: teacher %s, guide %s, w = %g", config.init_from, config.guide_from, config.guide_scale
    )
    return torch.no_grad()(AutoGuidedDiffusionStep(teacher, guide, config.guide_scale).eps)


def _checkpoint(out: Path, config: DDPMTrainConfig, ema_model: torch.nn.Module, step: int, seconds: float) -> None:
    extra = {"train": dataclasses.asdict(config), "step": step, "train_seconds_this_run": round(seconds, 1)}
    save_checkpoint(out, "unet", ema_model, config.unet, extra)


def _sample_grid(out: Path, ema_model: UNet, step: int, config: DDPMTrainConfig) -> None:
    """64 samples with DDIM (``grid_steps``) from the EMA weights, written next to the checkpoint (a
    class-conditional model: 80, labels 0-9 along each row, at ``grid_guidance``)."""
    ema_model.eval()
    conditional = ema_model.null_label is not None
    n, nrow = (80, 10) if conditional else (64, 8)
    x = sample(
        step_module(ema_model),
        n,
        seed=0,
        image_shape=(1, 28, 28),
        num_steps=config.grid_steps,
        sampler=schedule.Sampler.DDIM,
        eta=0.0,
        labels=np.arange(n) % 10 if conditional else None,
        guidance=config.grid_guidance,
    )
    images.save_grid(images.to_uint8(x.numpy()), out / "samples" / f"step{step:06d}.png", nrow=nrow)
