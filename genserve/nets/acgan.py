"""The auxiliary-classifier GAN discriminator (Odena et al. 2017): one feature stack, two heads,
a real/fake score and the logits of the image's class. Unlike the projection discriminator of
``cgan``, it never reads the label: the class enters training only through the cross-entropy of
the class head, which both nets minimise (the discriminator on real and generated images, the
generator on the class it was asked for). The generator is ``cgan``'s ``CGANGenerator``, so an
AC-GAN checkpoint is a ``cgan_generator`` one and exports and serves like ``cgan-mnist``."""

from __future__ import annotations

import torch
from torch import nn

from genserve.nets.cgan import CGANConfig
from genserve.nets.dcgan import init_weights


class ACGANDiscriminator(nn.Module):
    def __init__(self, config: CGANConfig):
        super().__init__()
        f = config.disc_features
        norm = (lambda ch: nn.BatchNorm2d(ch)) if config.disc_batchnorm else (lambda ch: nn.Identity())  # noqa: E731
        # The feature stack of cgan's projection discriminator, so the two differ only in how the class enters.
        self.body = nn.Sequential(
            nn.Conv2d(config.image_channels, f, 4, 2, 1),  # (B, f, 14, 14)
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(f, 2 * f, 4, 2, 1, bias=False),  # (B, 2f, 7, 7)
            norm(2 * f),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * f, 4 * f, 3, 2, 1, bias=False),  # (B, 4f, 4, 4)
            norm(4 * f),
            nn.LeakyReLU(0.2, True),
        )
        self.adversarial = nn.Linear(4 * f, 1)
        self.classifier = nn.Linear(4 * f, config.num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, 28, 28) -> real/fake logits or critic values (B,) and class logits (B, K)."""
        h = self.body(x).mean(dim=(2, 3))  # (B, 4f)
        return self.adversarial(h).flatten(), self.classifier(h)
