"""DDPM training (Ho et al. 2020): ε-prediction, uniform t, simple MSE loss, EMA weights."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from genserve import images, schedule
from genserve.nets import save_checkpoint
from genserve.nets.step import DiffusionStep, sample
from genserve.nets.unet import UNet, UNetConfig
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.loop import EMA, load_state, save_state, seed_everything

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


def learning_rate(config: DDPMTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def train_ddpm(out: Path, config: DDPMTrainConfig) -> Path:
    generator = seed_everything(config.seed)
    diffusion = schedule.default_diffusion()
    sqrt_ab = torch.tensor(diffusion.sqrt_alphas_cumprod, dtype=torch.float32)
    sqrt_1m_ab = torch.tensor(diffusion.sqrt_one_minus_alphas_cumprod, dtype=torch.float32)

    train, _ = mnist_splits()
    data = to_model_range(train.images).contiguous(memory_format=torch.channels_last)  # (N, 1, 28, 28)
    model = UNet(config.unet).to(memory_format=torch.channels_last)
    ema = EMA(model, config.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    out.mkdir(parents=True, exist_ok=True)
    start = load_state(out, generator, model=model, ema=ema.model, opt=opt)
    log.info("UNet with %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)

    t0 = time.time()
    model.train()
    bar = tqdm(total=config.steps, initial=start, desc="ddpm", unit="step", smoothing=0.05)
    batch_iter = batches(data, config.batch_size, generator)
    for step in range(start, config.steps):
        x0 = data[next(batch_iter)]  # (B, 1, 28, 28)
        t = torch.randint(0, diffusion.num_timesteps, (len(x0),), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = sqrt_ab[t][:, None, None, None] * x0 + sqrt_1m_ab[t][:, None, None, None] * eps
        loss = F.mse_loss(model(x_t, t), eps)
        for group in opt.param_groups:
            group["lr"] = learning_rate(config, step)
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
            _sample_grid(out, ema.model, done)
    bar.close()
    return out


def _checkpoint(out: Path, config: DDPMTrainConfig, ema_model: torch.nn.Module, step: int, seconds: float) -> None:
    extra = {"train": dataclasses.asdict(config), "step": step, "train_seconds_this_run": round(seconds, 1)}
    save_checkpoint(out, "unet", ema_model, config.unet, extra)


def _sample_grid(out: Path, ema_model: torch.nn.Module, step: int) -> None:
    """64 samples with 50-step DDIM from the EMA weights, written next to the checkpoint."""
    ema_model.eval()
    x = sample(
        DiffusionStep(ema_model),
        64,
        seed=0,
        image_shape=(1, 28, 28),
        num_steps=50,
        sampler=schedule.Sampler.DDIM,
        eta=0.0,
    )
    images.save_grid(images.to_uint8(x.numpy()), out / "samples" / f"step{step:06d}.png", nrow=8)
