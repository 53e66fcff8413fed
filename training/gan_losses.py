"""GAN objectives as pure functions of discriminator outputs, shared by every adversarial
family: non-saturating (Goodfellow et al. 2014), least squares (Mao et al. 2017), and the
Wasserstein critic loss, kept 1-Lipschitz either by weight clipping (Arjovsky et al. 2017: the
trainer clips) or by a gradient penalty (Gulrajani et al. 2017: ``gradient_penalty``)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

import torch
from torch.nn import functional as F


class GANLoss(enum.Enum):
    NON_SATURATING = "ns"
    LSGAN = "lsgan"
    WGAN_GP = "wgan-gp"
    WGAN = "wgan"  # weight clipping instead of the penalty

    @property
    def wasserstein(self) -> bool:
        """Whether the discriminator is a critic of unbounded scores (both WGANs)."""
        return self in (GANLoss.WGAN, GANLoss.WGAN_GP)


def discriminator_loss(kind: GANLoss, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Loss the discriminator (critic) minimises, from its outputs on real and generated data."""
    if kind is GANLoss.NON_SATURATING:
        return F.softplus(-real).mean() + F.softplus(fake).mean()  # -log D(x) - log(1 - D(G(z)))
    if kind is GANLoss.LSGAN:
        return 0.5 * ((real - 1.0).pow(2).mean() + fake.pow(2).mean())
    # Both WGANs: the caller adds the gradient penalty (WGAN-GP) or clips the weights (WGAN).
    return fake.mean() - real.mean()


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


@torch.no_grad()
def clip_weights(params: Iterable[torch.nn.Parameter], clip: float) -> None:
    """The original WGAN's Lipschitz constraint (Arjovsky et al. 2017): every critic parameter
    clamped to [-clip, clip] after each critic update."""
    for p in params:
        p.clamp_(-clip, clip)
