"""SRResNet (Ledig et al. 2017) for x4 super-resolution of 7x7 digits to 28x28: a wide 3x3
head (9x9 in the paper, too wide for a 7x7 input), residual blocks (conv-BN-PReLU-conv-BN),
a global skip, and two sub-pixel (PixelShuffle x2) upsampling stages. SRGAN shares this
generator; only its training differs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SRResNetConfig:
    features: int = 32
    blocks: int = 3
    scale_log2: int = 2  # x4
    image_channels: int = 1


class ResidualBlock(nn.Module):
    def __init__(self, f: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(f, f, 3, 1, 1, bias=False),
            nn.BatchNorm2d(f),
            nn.PReLU(f),
            nn.Conv2d(f, f, 3, 1, 1, bias=False),
            nn.BatchNorm2d(f),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    def __init__(self, config: SRResNetConfig):
        super().__init__()
        self.config = config
        f, c = config.features, config.image_channels
        self.head = nn.Sequential(nn.Conv2d(c, f, 5, 1, 2), nn.PReLU(f))
        self.blocks = nn.Sequential(*[ResidualBlock(f) for _ in range(config.blocks)])
        self.fuse = nn.Sequential(nn.Conv2d(f, f, 3, 1, 1, bias=False), nn.BatchNorm2d(f))
        self.upsample = nn.Sequential(
            *[
                layer
                for _ in range(config.scale_log2)
                for layer in (nn.Conv2d(f, 4 * f, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(f))
            ]
        )
        self.tail = nn.Sequential(nn.Conv2d(f, c, 5, 1, 2), nn.Tanh())

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """Low-res (B, C, h, w) in [-1, 1] -> (B, C, 4h, 4w) in [-1, 1]."""
        h = self.head(source)  # (B, f, 7, 7)
        h = h + self.fuse(self.blocks(h))
        return self.tail(self.upsample(h))  # (B, C, 28, 28)
