"""The evaluation classifier: a small CNN whose penultimate layer is the feature space
for FID on digits (the role Inception-v3 plays for natural images)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    feature_dim: int = 64


class Classifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(True))  # noqa: E731
        self.body = nn.Sequential(
            conv(1, 32),
            conv(32, 32),
            nn.MaxPool2d(2),  # (B, 32, 14, 14)
            conv(32, 64),
            conv(64, 64),
            nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, config.feature_dim),
            nn.ReLU(True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(config.feature_dim, config.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) in [-1, 1] -> features (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, num_classes) logits
