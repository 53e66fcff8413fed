"""The auxiliary-classifier GAN discriminator (Odena et al. 2017): one feature stack, two heads,
a real/fake score and the logits of the image's class. Unlike the projection discriminator of
``cgan``, it never reads the label: the class enters training only through the cross-entropy of
the class head, which both nets minimise (the discriminator on real and generated images, the
generator on the class it was asked for). The generator is ``cgan``'s ``CGANGenerator``, so an
AC-GAN checkpoint is a ``cgan_generator`` one and exports and serves like ``cgan-mnist``."""

from __future__ import annotations

import torch
from torch import nn

from genserve.nets.cgan import CGANConfig, discriminator_body
from genserve.nets.dcgan import init_weights


class ACGANDiscriminator(nn.Module):
    def __init__(self, config: CGANConfig):
        super().__init__()
        f = config.disc_features
        self.body = discriminator_body(config)  # cgan's, so the two differ only in how the class enters
        self.adversarial = nn.Linear(4 * f, 1)
        self.classifier = nn.Linear(4 * f, config.num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, 28, 28) -> real/fake logits or critic values (B,) and class logits (B, K)."""
        h = self.body(x).mean(dim=(2, 3))  # (B, 4f)
        return self.adversarial(h).flatten(), self.classifier(h)
