"""CycleGAN (Zhu et al. 2017) for 28x28 digits: two ResNet generators (7x7 conv, one stride-2
downsampling, residual blocks at 14x14, one upsampling, 7x7 conv; instance norm) in one module,
so one checkpoint holds both directions; each is served on its own. Discriminators are
``PatchDiscriminator``s and live only in the training state."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CycleGANConfig:
    features: int = 16  # channels at 28x28; 14x14 has twice as many
    blocks: int = 2
    image_channels: int = 1


class _ResBlock(nn.Module):
    def __init__(self, f: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(f, f, 3, 1, 1, padding_mode="reflect"),
            nn.InstanceNorm2d(f, affine=True),
            nn.ReLU(True),
            nn.Conv2d(f, f, 3, 1, 1, padding_mode="reflect"),
            nn.InstanceNorm2d(f, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    def __init__(self, config: CycleGANConfig):
        super().__init__()
        f, c = config.features, config.image_channels
        norm = lambda ch: nn.InstanceNorm2d(ch, affine=True)  # noqa: E731
        self.net = nn.Sequential(
            nn.Conv2d(c, f, 7, 1, 3, padding_mode="reflect"),
            norm(f),
            nn.ReLU(True),
            nn.Conv2d(f, 2 * f, 3, 2, 1),  # (B, 2f, 14, 14)
            norm(2 * f),
            nn.ReLU(True),
            *[_ResBlock(2 * f) for _ in range(config.blocks)],
            nn.ConvTranspose2d(2 * f, f, 4, 2, 1),  # (B, f, 28, 28)
            norm(f),
            nn.ReLU(True),
            nn.Conv2d(f, c, 7, 1, 3, padding_mode="reflect"),
            nn.Tanh(),
        )

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.net(source)


class CycleGAN(nn.Module):
    """g_ab: domain A (MNIST) -> B (scikit-learn digits); g_ba: B -> A."""

    def __init__(self, config: CycleGANConfig):
        super().__init__()
        self.config = config
        self.g_ab = ResnetGenerator(config)
        self.g_ba = ResnetGenerator(config)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.g_ab(source)
