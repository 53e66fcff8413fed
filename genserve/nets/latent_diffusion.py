"""Latent diffusion (Rombach et al. 2022) at MNIST scale: a DDPM on the 16-dimensional latents of
the served VAE (``models/vae-mnist``), decoded by that VAE's decoder once the last step is done.

The diffused state is the VAE posterior mean times a scalar ``scale`` chosen once at training so
the latents have about unit variance (LDM's ``scale_factor``). The network holds the ε-prediction
denoiser (an MLP with a sinusoidal time embedding and residual blocks) and a frozen copy of the
VAE decoder, so the checkpoint alone rebuilds both served graphs:

- the step (``LatentDiffusionStep``): x (B, D), t, coef, noise -> x_prev (B, D), the same fused
  update as the pixel DDPM (``genserve.nets.step.update``);
- the decoder (``LatentDecode``): the scaled latent the last step leaves (B, D) -> image in [-1, 1].

The step clips x̂₀ to ±(coef's clip column × ``clip_bound``): a request's ``clip_denoised`` asks for
x̂₀ in the data range, which for these latents is ±``clip_bound`` (their largest magnitude in the
training split), not the pixels' ±1, which would cut off every latent beyond one standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genserve import noise as noise_lib
from genserve import schedule
from genserve.nets.step import update
from genserve.nets.unet import timestep_embedding
from genserve.nets.vae import VAE, VAEConfig


@dataclass
class LatentDiffusionConfig:
    latent_dim: int = 16  # the VAE's
    image_channels: int = 1
    image_size: int = 28
    scale: float = 1.0  # diffused latent = scale * VAE posterior mean; set from the data at training
    clip_bound: float = 4.0  # the data range of the scaled latents; set from the data at training
    width: int = 192
    depth: int = 4  # residual blocks
    time_dim: int = 64  # sinusoidal embedding size
    dropout: float = 0.0
    vae_features: int = 16  # the VAE's ``features``; with latent_dim and image_channels it rebuilds the decoder

    def vae_config(self) -> VAEConfig:
        return VAEConfig(latent_dim=self.latent_dim, features=self.vae_features, image_channels=self.image_channels)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.emb = nn.Linear(width, 2 * width)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(2 * width, width)
        nn.init.zeros_(self.fc2.weight)  # each block starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        u = self.fc1(self.norm(h)) + self.emb(emb)  # (B, 2W)
        return h + self.fc2(self.dropout(F.silu(u)))


class Denoiser(nn.Module):
    """ε(x_t, t) for latent vectors x_t (B, D)."""

    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        w = config.width
        self.time_dim = config.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, w), nn.SiLU(), nn.Linear(w, w), nn.SiLU())
        self.inp = nn.Linear(config.latent_dim, w)
        self.blocks = nn.ModuleList(ResidualBlock(w, config.dropout) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, config.latent_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_dim))  # (B, W)
        h = self.inp(x)  # (B, W)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))  # (B, D)


class LatentDiffusion(nn.Module):
    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        self.config = config
        self.denoiser = Denoiser(config)
        # A frozen copy of the VAE's decoder (its weights are copied in before training).
        self.decoder = VAE(config.vae_config()).decoder.requires_grad_(False)

    def load_vae_decoder(self, vae: VAE) -> None:
        self.decoder.load_state_dict(vae.decoder.state_dict())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Scaled latents x_t (B, D) and int64 timesteps (B,) -> predicted ε (B, D)."""
        return self.denoiser(x, t)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, D) -> images (B, C, 28, 28) in [-1, 1]: the VAE's Bernoulli means,
        2 sigmoid(l) - 1 = tanh(l / 2), as ``VAE.decode``."""
        return torch.tanh(0.5 * self.decoder(latent * (1.0 / self.config.scale)))


class LatentDiffusionStep(nn.Module):
    """The served step graph: x (B, D), t (B,) int64, coef (B, 6), noise (B, D) -> x_prev (B, D)."""

    def __init__(self, net: LatentDiffusion):
        super().__init__()
        self.net = net
        # Columns of coef are used as they come, but the clip column, which scales to the latents' range.
        column_scale = torch.ones(len(schedule.COEF_COLUMNS))
        column_scale[schedule.COEF_COLUMNS.index("clip")] = net.config.clip_bound
        self.register_buffer("column_scale", column_scale, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # NO_CLIP × clip_bound is +inf in float32, which still leaves x̂₀ unclipped.
        return update(self.net(x, t), x, coef * self.column_scale, noise)


class LatentDecode(nn.Module):
    """The served decoder graph: latent (B, D) -> image (B, C, 28, 28) in [-1, 1]."""

    def __init__(self, net: LatentDiffusion):
        super().__init__()
        self.net = net

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net.decode(latent)


@torch.no_grad()
def sample(
    step: nn.Module,
    decode: nn.Module,
    num_images: int,
    seed: int,
    num_steps: int = schedule.NUM_TIMESTEPS,
    sampler: schedule.Sampler = schedule.Sampler.DDPM,
    eta: float = 0.0,
    clip_denoised: bool = True,
    diffusion: schedule.GaussianDiffusion | None = None,
) -> torch.Tensor:
    """Reference loop in PyTorch with the server's noise keys, on latents: image i of a request with
    seed s starts from gaussian(s, i, 0) of shape (D,) and draws gaussian(s, i, k + 1) at iteration k;
    the final latents are decoded -> images (N, C, 28, 28) in [-1, 1]. ``eta`` applies to DDIM only
    (the server's default there is 0)."""
    latent_dim = step.net.config.latent_dim
    diffusion = diffusion or schedule.default_diffusion()
    ts, coefs = schedule.step_coefficients(diffusion, num_steps, sampler, eta, clip_denoised=clip_denoised)
    seeds = np.full(num_images, seed)
    index = np.arange(num_images)
    shape = (latent_dim,)
    x = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(num_images, noise_lib.INITIAL_STEP), shape))
    for k, (t, c) in enumerate(zip(ts, coefs, strict=True)):
        z = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(num_images, k + 1), shape))
        tt = torch.full((num_images,), int(t), dtype=torch.int64)
        cc = torch.from_numpy(np.tile(c.astype(np.float32), (num_images, 1)))
        x = step(x, tt, cc, z)  # (N, D)
    return decode(x)
