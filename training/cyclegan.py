"""CycleGAN training (Zhu et al. 2017) between MNIST (domain A) and scikit-learn's 8x8 digits
resized to 28x28 (domain B), unpaired: least-squares adversarial losses for both directions,
cycle-consistency ||G_BA(G_AB(a)) - a||_1 + ||G_AB(G_BA(b)) - b||_1 weighted by
``cycle_weight``, and the identity loss (``identity_weight``) that keeps a generator from
changing images already in its target domain, as in the paper's photo experiments. Both
domains are white digits on black, and without it the digits-style images kept the cycle's
class only as hidden detail (docs/models.md); it costs two more generator passes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from genserve.nets.cyclegan import CycleGAN, CycleGANConfig
from genserve.nets.pix2pix import PatchDiscriminator
from genserve.training.data import batches, digits_splits, mnist_splits, to_model_range
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss
from genserve.training.loop import run_steps, save_family_checkpoint, save_sample_grid, seed_everything


@dataclass
class CycleGANTrainConfig:
    net: CycleGANConfig = field(default_factory=CycleGANConfig)
    cycle_weight: float = 10.0
    identity_weight: float = 5.0  # 0.5 x cycle_weight, as in the paper
    disc_features: int = 32
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0
    checkpoint_every: int = 500


def train_cyclegan(out: Path, config: CycleGANTrainConfig) -> Path:
    generator = seed_everything(config.seed)
    domain_a = to_model_range(mnist_splits()[0].images)  # (4000, 1, 28, 28)
    domain_b = to_model_range(digits_splits()[0].images)  # (1442, 1, 28, 28)
    model = CycleGAN(config.net)
    d_a, d_b = (PatchDiscriminator(config.net.image_channels, config.disc_features) for _ in range(2))
    betas = (config.beta1, 0.999)
    opt_g = torch.optim.Adam(model.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=config.lr, betas=betas)
    iter_a = batches(domain_a, config.batch_size, generator)
    iter_b = batches(domain_b, config.batch_size, generator)
    kind = GANLoss.LSGAN

    def step_fn(step: int) -> dict[str, float]:
        a, b = domain_a[next(iter_a)], domain_b[next(iter_b)]
        fake_b, fake_a = model.g_ab(a), model.g_ba(b)
        adversarial = generator_loss(kind, d_b(fake_b)) + generator_loss(kind, d_a(fake_a))
        cycle = F.l1_loss(model.g_ba(fake_b), a) + F.l1_loss(model.g_ab(fake_a), b)
        loss_g = adversarial + config.cycle_weight * cycle
        if config.identity_weight:
            identity = F.l1_loss(model.g_ab(b), b) + F.l1_loss(model.g_ba(a), a)
            loss_g = loss_g + config.identity_weight * identity
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        loss_d = discriminator_loss(kind, d_b(b), d_b(fake_b.detach())) + discriminator_loss(
            kind, d_a(a), d_a(fake_a.detach())
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        return {"adv": adversarial.item(), "cycle": cycle.item(), "loss_d": loss_d.item()}

    preview_a = to_model_range(mnist_splits()[1].images[:16])

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "cyclegan", model, config.net, config, step, seconds)
        model.eval()
        with torch.no_grad():
            to_b = model.g_ab(preview_a)
            save_sample_grid(out, torch.cat([preview_a, to_b, model.g_ba(to_b)]), step, nrow=16)
        model.train()

    state = {"model": model, "d_a": d_a, "d_b": d_b, "opt_g": opt_g, "opt_d": opt_d}
    run_steps(out, "cyclegan", config.steps, generator, state, step_fn, checkpoint_fn, config.checkpoint_every)
    return out
