"""DCGAN for 28×28 digits, following Radford et al. (2016): strided (transposed)
convolutions instead of pooling, batch norm in both nets (not on the generator output or
the discriminator input), ReLU + Tanh in the generator, LeakyReLU(0.2) in the discriminator,
weights drawn from N(0, 0.02)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DCGANConfig:
    latent_dim: int = 100
    image_channels: int = 1
    gen_features: int = 64  # channels at 14×14; 7×7 has twice as many
    disc_features: int = 64
    # Strided convs in the discriminator: 2 (to 7x7, then a 7x7 conv reads one logit; the bundled
    # model) or 3 (to 4x4, batch norm, mean-pooled and a linear logit: cgan-mnist's discriminator).
    disc_depth: int = 2
    # Generator: 2 (z -> 7x7 -> 14x14 -> 28x28; the bundled model) or 3 (z -> 3x3 -> 7x7 -> 14x14,
    # a 3x3 conv at 14x14, -> 28x28: cgan-mnist's generator without the label).
    gen_depth: int = 2


def init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        f = config.gen_features
        if config.gen_depth not in (2, 3):
            raise ValueError(f"gen_depth must be 2 or 3, got {config.gen_depth}")
        if config.gen_depth == 2:
            stem = [nn.ConvTranspose2d(config.latent_dim, 2 * f, 7, 1, 0, bias=False)]  # (B, 2f, 7, 7)
        else:
            stem = [
                nn.ConvTranspose2d(config.latent_dim, 2 * f, 3, 1, 0, bias=False),  # (B, 2f, 3, 3)
                nn.BatchNorm2d(2 * f),
                nn.ReLU(True),
                nn.ConvTranspose2d(2 * f, 2 * f, 3, 2, 0, bias=False),  # (B, 2f, 7, 7)
            ]
        extra = (
            [nn.Conv2d(f, f, 3, 1, 1, bias=False), nn.BatchNorm2d(f), nn.ReLU(True)] if config.gen_depth == 3 else []
        )
        self.net = nn.Sequential(
            *stem,
            nn.BatchNorm2d(2 * f),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * f, f, 4, 2, 1, bias=False),  # (B, f, 14, 14)
            nn.BatchNorm2d(f),
            nn.ReLU(True),
            *extra,
            nn.ConvTranspose2d(f, config.image_channels, 4, 2, 1),  # (B, C, 28, 28)
            nn.Tanh(),
        )
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_dim) -> images (B, C, 28, 28) in [-1, 1]."""
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, config: DCGANConfig):
        super().__init__()
        f = config.disc_features
        if config.disc_depth not in (2, 3):
            raise ValueError(f"disc_depth must be 2 or 3, got {config.disc_depth}")
        layers = [
            nn.Conv2d(config.image_channels, f, 4, 2, 1),  # (B, f, 14, 14)
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(f, 2 * f, 4, 2, 1, bias=False),  # (B, 2f, 7, 7)
            nn.BatchNorm2d(2 * f),
            nn.LeakyReLU(0.2, True),
        ]
        if config.disc_depth == 2:
            layers.append(nn.Conv2d(2 * f, 1, 7, 1, 0))  # (B, 1, 1, 1)
        else:
            layers += [
                nn.Conv2d(2 * f, 4 * f, 3, 2, 1, bias=False),  # (B, 4f, 4, 4)
                nn.BatchNorm2d(4 * f),
                nn.LeakyReLU(0.2, True),
                nn.AdaptiveAvgPool2d(1),  # (B, 4f, 1, 1)
                nn.Flatten(),
                nn.Linear(4 * f, 1),  # (B, 1)
            ]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,) logits
