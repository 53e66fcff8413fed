"""Latent diffusion training (Rombach et al. 2022) on the served VAE's latents.

The training split is encoded once by the VAE encoder; the diffused data is the posterior mean
(``Posterior.MEAN``, the default: the decoder reconstructs it best) or a fresh posterior sample
mu + sigma·ε per batch (``Posterior.SAMPLE``, LDM's choice). A scalar ``scale`` brings it to unit
variance (LDM's ``scale_factor``) and ``clip_bound`` records its range; both are computed once
from the data and stored in the network config. The loss is the DDPM one (ε-prediction, uniform t,
simple MSE, as ``training/ddpm.py``), with AdamW, warm-up + cosine and EMA weights. The VAE
decoder is copied into the network before the first step and stays frozen.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from genserve import schedule
from genserve.nets import load_checkpoint
from genserve.nets.latent_diffusion import (
    LatentDecode,
    LatentDiffusion,
    LatentDiffusionConfig,
    LatentDiffusionStep,
    sample,
)
from genserve.nets.vae import VAE
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.loop import (
    EMA,
    run_steps,
    save_family_checkpoint,
    save_sample_grid,
    seed_everything,
    warmup_cosine,
)

log = logging.getLogger(__name__)

DEFAULT_VAE = Path(__file__).resolve().parent.parent / "models" / "vae-mnist" / "weights"


class Posterior(enum.Enum):
    """Which latent of each training digit is diffused."""

    MEAN = "mean"  # the encoder's mean, fixed
    SAMPLE = "sample"  # mean + sigma * eps, redrawn every batch


@dataclass
class LatentDiffusionTrainConfig:
    net: LatentDiffusionConfig = field(default_factory=LatentDiffusionConfig)
    vae: str = str(DEFAULT_VAE)  # the VAE checkpoint folder whose latents are diffused
    posterior: str = Posterior.MEAN.value
    steps: int = 12000  # about 18 min at 1 thread on a shared 2-core machine
    batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 500
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 2000
    grid_steps: int = 50  # DDIM steps of the periodic sample grids


def learning_rate(config: LatentDiffusionTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` at ``steps``."""
    return warmup_cosine(step, config.steps, config.lr, config.warmup, config.min_lr)


@torch.no_grad()
def encode_split(vae: VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) in [-1, 1] -> posterior mean and standard deviation, each (N, D)."""
    mean, logvar = vae.encode(images)
    return mean, (0.5 * logvar).exp()


def latent_statistics(mean: torch.Tensor, std: torch.Tensor, posterior: Posterior) -> tuple[float, float]:
    """(scale, clip_bound): 1 / the standard deviation of the diffused latents over all entries
    (LDM's ``scale_factor``), and the largest magnitude of the scaled latents (for a posterior
    sample, mean ± 3 sigma), the data range the step clips x̂₀ to."""
    if posterior is Posterior.MEAN:
        spread, extent = mean.std().item(), mean.abs().max().item()
    else:  # Var[mu + sigma eps] = Var[mu] + E[sigma^2]
        spread = math.sqrt(mean.var().item() + std.pow(2).mean().item())
        extent = (mean.abs() + 3.0 * std).max().item()
    scale = 1.0 / spread
    return round(scale, 6), math.ceil(10.0 * scale * extent) / 10.0


def train_latent_diffusion(out: Path, config: LatentDiffusionTrainConfig) -> Path:
    posterior = Posterior(config.posterior)
    generator = seed_everything(config.seed)
    diffusion = schedule.default_diffusion()

    vae, meta = load_checkpoint(Path(config.vae))
    if meta["family"] != "vae":
        raise ValueError(f"{config.vae} holds a {meta['family']!r} checkpoint, not a VAE")
    net = config.net
    net.latent_dim, net.vae_features = vae.config.latent_dim, vae.config.features
    net.image_channels = vae.config.image_channels
    train, _ = mnist_splits()
    mean, std = encode_split(vae, to_model_range(train.images))  # (N, D) each
    net.scale, net.clip_bound = latent_statistics(mean, std, posterior)
    log.info("latents: scale %.4f, clip bound %.1f (%s)", net.scale, net.clip_bound, posterior.value)

    model = LatentDiffusion(net)
    model.load_vae_decoder(vae)
    ema = EMA(model, config.ema_decay)
    params = list(model.denoiser.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    log.info("denoiser with %.2fM parameters", sum(p.numel() for p in params) / 1e6)
    batch_iter = batches(mean, config.batch_size, generator)

    def step_fn(step: int) -> dict[str, float]:
        model.train()
        rows = next(batch_iter)
        z = mean[rows]  # (B, D)
        if posterior is Posterior.SAMPLE:
            z = z + std[rows] * torch.randn(z.shape, generator=generator)
        x0 = net.scale * z
        t = torch.randint(0, diffusion.num_timesteps, (len(x0),), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        loss = F.mse_loss(model(diffusion.q_sample(x0, t, eps), t), eps)
        lr = learning_rate(config, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        ema.update(model, step)
        return {"loss": loss.item(), "lr": lr}

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "latent_diffusion", ema.model, net, config, step, seconds)
        images = sample(
            LatentDiffusionStep(ema.model),
            LatentDecode(ema.model),
            100,
            seed=0,
            num_steps=config.grid_steps,
            sampler=schedule.Sampler.DDIM,
        )
        save_sample_grid(out, images, step, nrow=10)

    state = {"model": model, "ema": ema.model, "opt": opt}
    run_steps(out, "latent-diffusion", config.steps, generator, state, step_fn, checkpoint_fn, config.checkpoint_every)
    return out
