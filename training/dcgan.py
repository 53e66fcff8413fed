"""DCGAN training (Radford et al. 2016): Adam(2e-4, β1 = 0.5), the least-squares GAN loss (Mao et
al. 2017; ``--set loss=ns`` for the non-saturating one), a learning rate that falls linearly to 0
over the last steps, and an InfoGAN categorical code (Chen et al. 2016; ``--set
net.categorical_code=0`` for none): the discriminator's code head learns to read the code from
generated images and the generator to make it readable, which makes each code value a digit."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from genserve.nets import save_checkpoint
from genserve.nets.dcgan import DCGANConfig, Discriminator, Generator, code_one_hot
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss
from genserve.training.loop import (
    EMA,
    load_state,
    save_sample_grid,
    save_state,
    seed_everything,
    server_latents,
)

log = logging.getLogger(__name__)


@dataclass
class DCGANTrainConfig:
    # The bundled recipe: cgan-mnist's generator (without its label) and discriminator, LSGAN, an
    # InfoGAN code of 10 values, 18,000 steps at a constant learning rate, then 6,000 with it
    # falling linearly to 0.
    net: DCGANConfig = field(default_factory=lambda: DCGANConfig(disc_depth=3, gen_depth=3, categorical_code=10))
    loss: str = GANLoss.LSGAN.value  # or ns; no gradient penalty here, so not wgan-gp
    steps: int = 24000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 1000
    ema_decay: float = 0.0  # > 0: checkpoint an EMA of the generator (as cgan does); 0: none (bundled)
    # > 0: from this step on both learning rates fall linearly to 0 at ``steps`` (pix2pix's and
    # CycleGAN's schedule); 0: constant
    lr_decay_start: int = 18000
    # weight of the InfoGAN code loss (cross-entropy of the code head on generated images) in both
    # nets' losses; used only when net.categorical_code > 0
    code_weight: float = 1.0


def learning_rate(config: DCGANTrainConfig, step: int) -> float:
    """Both nets' learning rate at ``step``: constant, then linear to 0 from ``lr_decay_start``."""
    if not 0 < config.lr_decay_start < config.steps or step < config.lr_decay_start:
        return config.lr
    return config.lr * (config.steps - step) / (config.steps - config.lr_decay_start)


def train_dcgan(out: Path, config: DCGANTrainConfig) -> Path:
    kind = GANLoss(config.loss)
    if kind is GANLoss.WGAN_GP:
        raise ValueError("dcgan trains with loss ns or lsgan; WGAN-GP needs a critic without batch norm (see cgan)")
    generator_rng = seed_everything(config.seed)
    train, _ = mnist_splits()
    data = to_model_range(train.images)  # (N, 1, 28, 28)
    gen, disc = Generator(config.net), Discriminator(config.net)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    out.mkdir(parents=True, exist_ok=True)
    ema = EMA(gen, config.ema_decay) if config.ema_decay > 0 else None
    state = {"gen": gen, "disc": disc, "opt_g": opt_g, "opt_d": opt_d, **({"ema": ema.model} if ema else {})}
    start = load_state(out, generator_rng, nets=("dcgan_generator", config.net), **state)
    served = ema.model if ema else gen  # what checkpoints and grids show

    t0 = time.time()
    bar = tqdm(total=config.steps, initial=start, desc=f"dcgan-{kind.value}", unit="step", smoothing=0.05)
    batch_iter = batches(data, config.batch_size, generator_rng)
    k = config.net.categorical_code
    stats: dict[str, str] = {}  # the code head's accuracy on generated images, when there is one
    for step in range(start, config.steps):
        for group in (*opt_d.param_groups, *opt_g.param_groups):
            group["lr"] = learning_rate(config, step)  # set every step: a resumed run follows the schedule too
        real = data[next(batch_iter)]  # (B, 1, 28, 28)
        z = torch.randn(len(real), config.net.latent_dim, generator=generator_rng)
        fake = gen(z)
        code = code_one_hot(z, k).argmax(dim=1) if k else None  # (B,) InfoGAN categories
        fake_logits, code_loss = _judge(disc, fake.detach(), code, config, stats)
        loss_d = discriminator_loss(kind, disc(real), fake_logits) + code_loss
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        fake_logits, code_loss = _judge(disc, fake, code, config, stats)
        loss_g = generator_loss(kind, fake_logits) + code_loss
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if ema:
            ema.update(gen, step)

        bar.update(1)
        bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}", **stats)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            extra = {
                "train": dataclasses.asdict(config),
                "step": done,
                "train_seconds_this_run": round(time.time() - t0, 1),
            }
            save_checkpoint(out, "dcgan_generator", served, config.net, extra)
            save_state(out, done, generator_rng, **state)
        if done % config.sample_every == 0 or done == config.steps:
            _sample_grid(out, served, config.net.latent_dim, done)
    bar.close()
    return out


def _judge(
    disc: Discriminator, fake: torch.Tensor, code: torch.Tensor | None, config: DCGANTrainConfig, stats: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's logits on generated images, and the weighted InfoGAN code loss from the
    same pass (the code head's cross-entropy against the code each image was drawn with; 0 without
    a code). Both nets add it to their loss: the generator so its images carry their code, the
    head so it reads it."""
    if code is None:
        return disc(fake), torch.zeros(())
    logits, code_logits = disc.forward_with_code(fake)
    stats["code_acc"] = f"{(code_logits.argmax(1) == code).float().mean().item():.2f}"
    return logits, config.code_weight * torch.nn.functional.cross_entropy(code_logits, code)


@torch.no_grad()
def _sample_grid(out: Path, gen: Generator, latent_dim: int, step: int) -> None:
    training = gen.training
    gen.eval()
    k = gen.config.categorical_code
    n = 8 * k if k else 64
    z = server_latents(n, latent_dim)  # the server's latents for seed 0
    if k:  # one row per code: raise coordinate r of row r above the others
        z[torch.arange(n), torch.arange(n) // 8] = z[:, :k].amax(dim=1) + 1.0
    save_sample_grid(out, gen(z), step)
    gen.train(training)
