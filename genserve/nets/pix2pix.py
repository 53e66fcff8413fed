"""pix2pix (Isola et al. 2017) scaled to 28x28: a U-Net generator (encoder 28 -> 14 -> 7, skip
connections by concatenation, dropout as the noise source in the decoder) and a PatchGAN
discriminator whose 7x7 output judges overlapping 18x18 patches (the paper's 70x70 PatchGAN
covers about a quarter of a 256 image side; 18 of 28 keeps the same role on digits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genserve.nets.dcgan import init_weights


@dataclass
class UNetTranslatorConfig:
    in_channels: int = 1
    out_channels: int = 1
    features: int = 32  # channels at 14x14; 7x7 has twice as many
    dropout: float = 0.5


class UNetGenerator(nn.Module):
    def __init__(self, config: UNetTranslatorConfig):
        super().__init__()
        self.config = config
        f = config.features
        self.down1 = nn.Sequential(nn.Conv2d(config.in_channels, f, 4, 2, 1), nn.LeakyReLU(0.2, True))  # 14x14
        self.down2 = nn.Sequential(
            nn.Conv2d(f, 2 * f, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * f), nn.LeakyReLU(0.2, True)
        )  # 7x7
        self.middle = nn.Sequential(
            nn.Conv2d(2 * f, 2 * f, 3, 1, 1, bias=False),
            nn.BatchNorm2d(2 * f),
            nn.ReLU(True),
            nn.Dropout(config.dropout),
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(4 * f, f, 4, 2, 1, bias=False), nn.BatchNorm2d(f), nn.ReLU(True)
        )  # 14x14
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * f, config.out_channels, 4, 2, 1), nn.Tanh())  # 28x28
        self.apply(init_weights)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """Source (B, in, 28, 28) in [-1, 1] -> image (B, out, 28, 28) in [-1, 1]."""
        d1 = self.down1(source)  # (B, f, 14, 14)
        d2 = self.down2(d1)  # (B, 2f, 7, 7)
        u2 = self.up2(torch.cat([self.middle(d2), d2], dim=1))  # (B, f, 14, 14)
        return self.up1(torch.cat([u2, d1], dim=1))


class PatchDiscriminator(nn.Module):
    """Logits (B, 7, 7), one per 18x18 patch; conditional when in_channels counts the source too."""

    def __init__(self, in_channels: int, features: int = 32):
        super().__init__()
        f = features
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, f, 4, 2, 1),  # (B, f, 14, 14)
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(f, 2 * f, 4, 2, 1, bias=False),  # (B, 2f, 7, 7)
            nn.BatchNorm2d(2 * f),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * f, 1, 3, 1, 1),  # (B, 1, 7, 7)
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]
