"""Variational autoencoder (Kingma & Welling 2014) with a small convolutional encoder and
decoder. The decoder outputs Bernoulli logits on pixel intensity in [0, 1]; images in
[-1, 1] are 2 sigmoid(l) - 1 = tanh(l / 2). Two servable views: the decoder alone (a sampler,
z ~ N(0, I)) and encoder mean -> decoder (a translator that reconstructs a digit)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VAEConfig:
    latent_dim: int = 16
    features: int = 16  # channels at 14x14; 7x7 has twice as many
    image_channels: int = 1


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        f, c, k = config.features, config.image_channels, config.latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(c, f, 4, 2, 1),  # (B, f, 14, 14)
            nn.SiLU(),
            nn.Conv2d(f, 2 * f, 4, 2, 1),  # (B, 2f, 7, 7)
            nn.SiLU(),
            nn.Conv2d(2 * f, 2 * f, 3, 1, 1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * f * 49, 2 * k),  # (B, 2k): mean and log-variance
        )
        self.decoder = nn.Sequential(
            nn.Linear(k, 2 * f * 49),
            nn.Unflatten(1, (2 * f, 7, 7)),
            nn.SiLU(),
            nn.Conv2d(2 * f, 2 * f, 3, 1, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(2 * f, f, 4, 2, 1),  # (B, f, 14, 14)
            nn.SiLU(),
            nn.ConvTranspose2d(f, c, 4, 2, 1),  # (B, C, 28, 28) logits
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, 28, 28) in [-1, 1] -> posterior mean and log-variance, each (B, k)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, C, 28, 28)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, k) -> mean images in [-1, 1]."""
        return torch.tanh(0.5 * self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])


class VAEDecoder(nn.Module):
    """The sampler view: z (B, k) -> image."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)


class VAEReconstruct(nn.Module):
    """The translator view: source digit -> decoder(encoder mean), deterministic."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.vae(source)
