"""Class-conditional GAN training with a choice of objective (``GANLoss``), so the three can
be compared on the same networks, data and step budget. The served generator is an EMA of the
trained one (batch-norm statistics copied), which smooths GAN weight oscillations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from genserve.nets.cgan import CGANConfig, CGANGenerator, ProjectionDiscriminator
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss, gradient_penalty
from genserve.training.loop import (
    EMA,
    run_steps,
    save_family_checkpoint,
    save_sample_grid,
    seed_everything,
    server_latents,
)


@dataclass
class CGANTrainConfig:
    net: CGANConfig = field(default_factory=CGANConfig)
    loss: str = GANLoss.LSGAN.value  # the served choice: best of the three (docs/models.md)
    steps: int = 3000  # generator steps
    critic_steps: int = 1  # discriminator steps per generator step (WGAN-GP: 5 in the paper)
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gp_weight: float = 10.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500


def train_cgan(out: Path, config: CGANTrainConfig) -> Path:
    kind = GANLoss(config.loss)
    generator = seed_everything(config.seed)
    train, _ = mnist_splits()
    data, labels = to_model_range(train.images), torch.from_numpy(train.labels)  # (N, 1, 28, 28), (N,)
    gen, disc = CGANGenerator(config.net), ProjectionDiscriminator(config.net)
    ema = EMA(gen, config.ema_decay)
    betas = tuple(config.betas)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas)
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
            loss_d = discriminator_loss(kind, disc(real, real_y), disc(fake, fake_y))
            if kind is GANLoss.WGAN_GP:
                # Interpolates between a real and a fake image carry the real image's label.
                loss_d = loss_d + config.gp_weight * gradient_penalty(
                    lambda x, y=real_y: disc(x, y), real, fake, generator
                )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        fake, fake_y = fake_batch()
        loss_g = generator_loss(kind, disc(fake, fake_y))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(gen, step)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "cgan_generator", ema.model, config.net, config, step, seconds)
        with torch.no_grad():
            z = server_latents(100, config.net.latent_dim)
            save_sample_grid(out, ema.model(z, torch.arange(100) % k), step, nrow=10)  # column j: class j

    state = {"gen": gen, "disc": disc, "ema": ema.model, "opt_g": opt_g, "opt_d": opt_d}
    run_steps(
        out, f"cgan-{kind.value}", config.steps, generator, state, step_fn, checkpoint_fn, config.checkpoint_every
    )
    return out
