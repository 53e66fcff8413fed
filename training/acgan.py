"""AC-GAN training (Odena et al. 2017): ``cgan``'s generator against a discriminator with a
class head (``ACGANDiscriminator``). The discriminator minimises its adversarial loss plus the
cross-entropy of the true class on real images and of the asked class on generated ones; the
generator minimises its adversarial loss plus the cross-entropy of the asked class on its images,
so it is pushed to draw digits the discriminator recognises as that class. The objective and its
optimiser recipe are ``cgan``'s (``GANLoss``, ``training.cgan.RECIPES``); the served generator is
an EMA of the trained one, as for ``cgan-mnist``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from genserve.nets.acgan import ACGANDiscriminator
from genserve.nets.cgan import CGANConfig, CGANGenerator
from genserve.training.cgan import make_optimizer, resolved
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.gan_losses import (
    GANLoss,
    clip_weights,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
)
from genserve.training.loop import (
    EMA,
    run_steps,
    save_family_checkpoint,
    save_sample_grid,
    seed_everything,
    server_latents,
)


@dataclass
class ACGANTrainConfig:
    net: CGANConfig = field(default_factory=CGANConfig)
    loss: str = GANLoss.LSGAN.value  # cgan-mnist's
    steps: int = 3000  # generator steps
    # Weight of the class cross-entropy next to the adversarial loss (1 in the paper). At 1 it
    # dwarfs LSGAN's loss (~0.1 against ~2.3 at the start): both nets settled on class-coded
    # noise the class head reads perfectly (G's class loss 0.03 at step 500, no digit shapes),
    # where 0.1 drew digits of the asked class by step 400.
    class_weight: float = 0.1
    # None: the loss's recipe (training.cgan.RECIPES), filled in by ``resolved`` and stored so.
    optimizer: str | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    critic_steps: int | None = None
    clip: float | None = None
    batch_size: int = 64
    gp_weight: float = 10.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500


def discriminator_objective(
    kind: GANLoss,
    disc: ACGANDiscriminator,
    real: torch.Tensor,
    real_y: torch.Tensor,
    fake: torch.Tensor,
    fake_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's adversarial loss and its class loss: the cross-entropy of the true
    class on the real batch plus that of the asked class on the generated batch (L_C in the paper)."""
    adv_real, cls_real = disc(real)  # (B,), (B, K)
    adv_fake, cls_fake = disc(fake)
    return discriminator_loss(kind, adv_real, adv_fake), F.cross_entropy(cls_real, real_y) + F.cross_entropy(
        cls_fake, fake_y
    )


def generator_objective(
    kind: GANLoss, disc: ACGANDiscriminator, fake: torch.Tensor, fake_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's adversarial loss and the cross-entropy of the asked class on its images."""
    adv_fake, cls_fake = disc(fake)
    return generator_loss(kind, adv_fake), F.cross_entropy(cls_fake, fake_y)


def train_acgan(out: Path, config: ACGANTrainConfig) -> Path:
    config = resolved(config)
    kind = GANLoss(config.loss)
    generator = seed_everything(config.seed)
    train, _ = mnist_splits()
    data, labels = to_model_range(train.images), torch.from_numpy(train.labels)  # (N, 1, 28, 28), (N,)
    gen, disc = CGANGenerator(config.net), ACGANDiscriminator(config.net)
    ema = EMA(gen, config.ema_decay)
    opt_g, opt_d = make_optimizer(gen.parameters(), config), make_optimizer(disc.parameters(), config)
    batch_iter = batches(data, config.batch_size, generator)
    n, k = config.batch_size, config.net.num_classes

    def fake_batch() -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(n, config.net.latent_dim, generator=generator)
        y = torch.randint(0, k, (n,), generator=generator)
        return gen(z, y), y

    def step_fn(step: int) -> dict[str, float]:
        for _ in range(config.critic_steps):
            idx = next(batch_iter)
            real, real_y = data[idx], labels[idx]
            with torch.no_grad():
                fake, fake_y = fake_batch()
            adv_d, cls_d = discriminator_objective(kind, disc, real, real_y, fake, fake_y)
            loss_d = adv_d + config.class_weight * cls_d
            if kind is GANLoss.WGAN_GP:
                loss_d = loss_d + config.gp_weight * gradient_penalty(lambda x: disc(x)[0], real, fake, generator)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            if config.clip:
                clip_weights(disc.parameters(), config.clip)
        fake, fake_y = fake_batch()
        adv_g, cls_g = generator_objective(kind, disc, fake, fake_y)
        loss_g = adv_g + config.class_weight * cls_g
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(gen, step)
        return {"adv_d": adv_d.item(), "cls_d": cls_d.item(), "adv_g": adv_g.item(), "cls_g": cls_g.item()}

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "cgan_generator", ema.model, config.net, config, step, seconds)
        with torch.no_grad():
            z = server_latents(100, config.net.latent_dim)
            save_sample_grid(out, ema.model(z, torch.arange(100) % k), step, nrow=10)  # column j: class j

    state = {"gen": gen, "disc": disc, "ema": ema.model, "opt_g": opt_g, "opt_d": opt_d}
    run_steps(
        out, f"acgan-{kind.value}", config.steps, generator, state, step_fn, checkpoint_fn, config.checkpoint_every
    )
    return out
