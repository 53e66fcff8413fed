"""Class-conditional GAN training with a choice of objective (``GANLoss``), so the four can
be compared on the same networks, data and step budget (``benchmarks/gan_losses.py``). Each
objective brings its paper's optimiser recipe (``RECIPES``): a config field left ``None`` takes
it, so ``--set loss=wgan`` alone trains the original WGAN. The served generator is an EMA of the
trained one (batch-norm statistics copied), which smooths GAN weight oscillations."""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from genserve.nets.cgan import CGANConfig, CGANGenerator, ProjectionDiscriminator
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

log = logging.getLogger(__name__)


class Optimizer(enum.Enum):
    ADAM = "adam"
    RMSPROP = "rmsprop"


@dataclass(frozen=True)
class Recipe:
    """The optimiser settings an objective was published with."""

    optimizer: Optimizer
    lr: float
    betas: tuple[float, float] | None  # Adam only
    critic_steps: int  # discriminator steps per generator step
    clip: float | None  # clip every critic parameter to [-clip, clip] after each critic step


_DCGAN = Recipe(Optimizer.ADAM, 2e-4, (0.5, 0.999), 1, None)  # Radford et al. (2016)
RECIPES: dict[GANLoss, Recipe] = {
    GANLoss.NON_SATURATING: _DCGAN,
    GANLoss.LSGAN: _DCGAN,  # the served cgan-mnist recipe
    GANLoss.WGAN_GP: Recipe(Optimizer.ADAM, 1e-4, (0.0, 0.9), 5, None),  # Gulrajani et al. (2017), Algorithm 1
    # Arjovsky et al. (2017), Algorithm 1: momentum-free RMSProp, because Adam made the clipped
    # critic unstable for them.
    GANLoss.WGAN: Recipe(Optimizer.RMSPROP, 5e-5, None, 5, 0.01),
}


@dataclass
class CGANTrainConfig:
    net: CGANConfig = field(default_factory=CGANConfig)
    loss: str = GANLoss.LSGAN.value  # the served choice: see benchmarks/results/gan_losses.json
    steps: int = 3000  # generator steps
    # None: the loss's recipe (RECIPES); ``resolved`` fills them in, and checkpoints store that.
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


TrainConfig = TypeVar("TrainConfig")


def resolved(config: TrainConfig) -> TrainConfig:
    """``config`` with every optimiser field left None set from its loss's recipe. Any train config
    with ``loss`` and the optimiser fields of ``CGANTrainConfig`` will do (AC-GAN's too)."""
    recipe = RECIPES[GANLoss(config.loss)]
    fills = {
        "optimizer": recipe.optimizer.value,
        "lr": recipe.lr,
        "betas": recipe.betas,
        "critic_steps": recipe.critic_steps,
        "clip": recipe.clip,
    }
    out = dataclasses.replace(config, **{k: v for k, v in fills.items() if getattr(config, k) is None})
    if out.betas is not None:
        out.betas = tuple(out.betas)  # --set and JSON give lists
    return out


def make_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of a resolved config."""
    if Optimizer(config.optimizer) is Optimizer.RMSPROP:
        return torch.optim.RMSprop(params, lr=config.lr)
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas or (0.9, 0.999))


def critic_step(
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: Iterable[torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    config: CGANTrainConfig,
    real: torch.Tensor,
    real_y: torch.Tensor,
    fake: torch.Tensor,
    fake_y: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """One discriminator update of a resolved config on a real and a (detached) generated batch;
    returns its loss. WGAN-GP adds the penalty, WGAN clips the weights afterwards."""
    kind = GANLoss(config.loss)
    loss = discriminator_loss(kind, critic(real, real_y), critic(fake, fake_y))
    if kind is GANLoss.WGAN_GP:
        # Interpolates between a real and a fake image carry the real image's label.
        loss = loss + config.gp_weight * gradient_penalty(lambda x, y=real_y: critic(x, y), real, fake, generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if config.clip:
        clip_weights(params, config.clip)
    return loss


def train_cgan(out: Path, config: CGANTrainConfig) -> Path:
    config = resolved(config)
    kind = GANLoss(config.loss)
    if kind is GANLoss.WGAN_GP and config.net.disc_batchnorm:
        log.warning("WGAN-GP with a batch-norm critic: the per-sample penalty assumes none (net.disc_batchnorm=false)")
    generator = seed_everything(config.seed)
    train, _ = mnist_splits()
    data, labels = to_model_range(train.images), torch.from_numpy(train.labels)  # (N, 1, 28, 28), (N,)
    gen, disc = CGANGenerator(config.net), ProjectionDiscriminator(config.net)
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
            with torch.no_grad():
                fake, fake_y = fake_batch()
            loss_d = critic_step(
                disc, disc.parameters(), opt_d, config, data[idx], labels[idx], fake, fake_y, generator
            )
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
