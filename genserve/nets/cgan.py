"""Class-conditional GAN (Mirza & Osindero 2014) for 28x28 digits. The class enters both nets
through an ``nn.Embedding``: concatenated to z in the generator, and as a projection
(Miyato & Koyama 2018: logit = psi(h) + <embed(y), h>) in the discriminator, which conditions
more strongly than concatenating a label map. The discriminator follows the DCGAN one with
batch norm, which judges a batch's statistics too and so resists mode collapse (a per-sample
discriminator collapsed the first non-saturating run to one image within 500 steps); for
WGAN-GP, whose penalty is per sample, ``disc_batchnorm=False`` removes it, as in Gulrajani
et al. (2017)"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genserve.nets.dcgan import init_weights


@dataclass
class CGANConfig:
    latent_dim: int = 64
    num_classes: int = 10
    embed_dim: int = 16
    gen_features: int = 32  # channels at 14x14; 7x7 and 3x3 have twice as many
    disc_features: int = 32
    disc_batchnorm: bool = True
    image_channels: int = 1


class CGANGenerator(nn.Module):
    def __init__(self, config: CGANConfig):
        super().__init__()
        self.config = config
        f = config.gen_features
        self.embed = nn.Embedding(config.num_classes, config.embed_dim)
        self.project = nn.Sequential(
            nn.Linear(config.latent_dim + config.embed_dim, 2 * f * 9, bias=False),
            nn.Unflatten(1, (2 * f, 3, 3)),
            nn.BatchNorm2d(2 * f),
            nn.ReLU(True),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * f, 2 * f, 3, 2, 0, bias=False),  # (B, 2f, 7, 7)
            nn.BatchNorm2d(2 * f),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * f, f, 4, 2, 1, bias=False),  # (B, f, 14, 14)
            nn.BatchNorm2d(f),
            nn.ReLU(True),
            nn.Conv2d(f, f, 3, 1, 1, bias=False),
            nn.BatchNorm2d(f),
            nn.ReLU(True),
            nn.ConvTranspose2d(f, config.image_channels, 4, 2, 1),  # (B, C, 28, 28)
            nn.Tanh(),
        )
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_dim) and int64 classes (B,) -> images (B, C, 28, 28) in [-1, 1]."""
        return self.net(self.project(torch.cat([z, self.embed(label)], dim=1)))


def discriminator_body(config: CGANConfig) -> nn.Sequential:
    """The discriminators' feature stack, (B, C, 28, 28) -> (B, 4f, 4, 4): the projection one here
    and AC-GAN's (``nets.acgan``) differ only in how the class enters after it."""
    f = config.disc_features
    norm = (lambda ch: nn.BatchNorm2d(ch)) if config.disc_batchnorm else (lambda ch: nn.Identity())  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(config.image_channels, f, 4, 2, 1),  # (B, f, 14, 14)
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(f, 2 * f, 4, 2, 1, bias=False),  # (B, 2f, 7, 7)
        norm(2 * f),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(2 * f, 4 * f, 3, 2, 1, bias=False),  # (B, 4f, 4, 4)
        norm(4 * f),
        nn.LeakyReLU(0.2, True),
    )


class ProjectionDiscriminator(nn.Module):
    def __init__(self, config: CGANConfig):
        super().__init__()
        f = config.disc_features
        self.body = discriminator_body(config)
        self.psi = nn.Linear(4 * f, 1)
        self.embed = nn.Embedding(config.num_classes, 4 * f)
        self.apply(init_weights)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)  # the projection term starts small, like the convs

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean(dim=(2, 3))  # (B, 4f)
        return self.psi(h).flatten() + (self.embed(label) * h).sum(1)  # (B,) logits / critic values
