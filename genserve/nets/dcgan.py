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
    # k > 0: an InfoGAN categorical code (Chen et al. 2016). The code is the argmax of the first k
    # latent coordinates, so it is uniform over k categories and drawn from the same Gaussian
    # latents the server sends; the generator reads it one-hot in place of those coordinates, and
    # the discriminator gets a head that predicts it from the image. 0: plain DCGAN.
    categorical_code: int = 0


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
        k = self.config.categorical_code
        if k:
            z = torch.cat([code_one_hot(z, k), z[:, k:]], dim=1)
        return self.net(z[:, :, None, None])


def code_one_hot(z: torch.Tensor, k: int) -> torch.Tensor:
    """The categorical code of latents (B, latent_dim) as one-hot rows (B, k): argmax of z[:, :k]."""
    head = z[:, :k]
    return (head == head.amax(dim=1, keepdim=True)).to(z.dtype)


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
        self.code_head = None
        if config.categorical_code:
            if config.disc_depth != 3:
                raise ValueError("categorical_code needs disc_depth 3 (its head reads the pooled features)")
            self.net, self.logit = nn.Sequential(*layers[:-1]), layers[-1]  # body, then (B, 4f) -> (B, 1)
            k = config.categorical_code
            self.code_head = nn.Sequential(nn.Linear(4 * f, 4 * f), nn.LeakyReLU(0.2, True), nn.Linear(4 * f, k))
        else:
            self.net, self.logit = nn.Sequential(*layers), nn.Identity()
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.net(x)).flatten()  # (B,) logits

    def forward_with_code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real/fake logits (B,) and the categorical code's logits (B, k), from one pass."""
        if self.code_head is None:
            raise ValueError("this discriminator has no code head (categorical_code = 0)")
        h = self.net(x)
        return self.logit(h).flatten(), self.code_head(h)
