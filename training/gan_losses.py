"""GAN objectives as pure functions of discriminator outputs, shared by every adversarial
family: non-saturating (Goodfellow et al. 2014), least squares (Mao et al. 2017) and
Wasserstein with gradient penalty (Gulrajani et al. 2017)."""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch
from torch.nn import functional as F


class GANLoss(enum.Enum):
    NON_SATURATING = "ns"
    LSGAN = "lsgan"
    WGAN_GP = "wgan-gp"


def discriminator_loss(kind: GANLoss, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Loss the discriminator (critic) minimises, from its outputs on real and generated data."""
    if kind is GANLoss.NON_SATURATING:
        return F.softplus(-real).mean() + F.softplus(fake).mean()  # -log D(x) - log(1 - D(G(z)))
    if kind is GANLoss.LSGAN:
        return 0.5 * ((real - 1.0).pow(2).mean() + fake.pow(2).mean())
    return fake.mean() - real.mean()  # WGAN critic; the gradient penalty is added by the caller


def generator_loss(kind: GANLoss, fake: torch.Tensor) -> torch.Tensor:
    """Loss the generator minimises, from the discriminator's outputs on generated data."""
    if kind is GANLoss.NON_SATURATING:
        return F.softplus(-fake).mean()  # -log D(G(z))
    if kind is GANLoss.LSGAN:
        return 0.5 * (fake - 1.0).pow(2).mean()
    return -fake.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """E[(||grad critic(x_hat)||_2 - 1)^2] on random interpolates x_hat of real and fake samples."""
    alpha = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator)
    x_hat = (alpha * real + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()
