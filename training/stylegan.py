"""StyleGAN2 training (Karras et al. 2020) at MNIST scale: the non-saturating loss with a lazy R1
penalty on real images (every ``r1_every`` steps, scaled up by that interval, with Adam's
hyperparameters adjusted for the interval as in the paper), Adam(beta1 = 0, beta2 = 0.99),
style-mixing regularisation (each image's layers from a random one on take a second latent's
w), ``w_avg`` tracked from the generator step's mapped w, and DiffAugment (``augment``: the
discriminator sees reals and fakes alike through random translation, and cutout if asked). With
``net.classes`` the discriminator is told each image's class (a training digit's label, a
generated image's argmax class of z) and projects on it; the generator reads the class from z
alone, so it samples unconditionally. The served generator is an EMA of the trained one;
``EMA.update`` copies the buffers, ``w_avg`` and the constant noise, with it.

``save_grids`` and ``quality`` draw the documentation grids and the figures the docs quote from
a trained generator, reproducibly: latents from ``server_latents``, noise from the checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genserve.nets.dcgan import code_one_hot
from genserve.nets.stylegan import StyleGANConfig, StyleGANDiscriminator, StyleGANGenerator, mix_styles
from genserve.training import EVAL_SEED
from genserve.training.augment import diff_augment, parse_policy
from genserve.training.data import batches, mnist_splits, to_model_range, to_uint8
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss
from genserve.training.loop import (
    EMA,
    run_steps,
    save_family_checkpoint,
    save_sample_grid,
    seed_everything,
    server_latents,
)

log = logging.getLogger(__name__)

MIXING_SEEDS = (1, 2)  # the mixing grid's row seed and column seed
MIXING_LAYER = 3  # the mixing grid's k: layers 0-2 (7x7 and 14x14) from the row's latent


@dataclass
class StyleGANTrainConfig:
    # The bundled recipe (stylegan-mnist): 10,000 steps at batch 32, the learning rates constant for
    # 7,000, then falling linearly to 0, DiffAugment translation on; ~50 minutes on one CPU thread.
    # Class-conditional (net.classes; served unconditional): the same recipe without classes is 0.88
    # confident at seed 2026 (recall 0.88, FID / floor 1.08), with them 0.99 (recall 0.78, 1.45;
    # training seed 1, the bundled one) and 1.00 (recall 0.64, 2.12; training seed 0)
    net: StyleGANConfig = field(default_factory=lambda: StyleGANConfig(classes=10))
    loss: str = GANLoss.NON_SATURATING.value  # or lsgan; the R1 penalty applies to either
    steps: int = 10000
    batch_size: int = 32
    lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 0.1  # R1 weight gamma: the penalty is gamma / 2 * E ||grad D(x)||^2 on real x
    r1_every: int = 16  # lazy regularisation interval (StyleGAN2): penalty every k steps, times k
    style_mixing_prob: float = 0.9
    ema_decay: float = 0.998  # StyleGAN2's half-life of 10k images at batch 32 is ~0.9978 per step
    # > 0: from this step on both learning rates fall linearly to 0 at ``steps`` (as dcgan's); 0: constant
    lr_decay_start: int = 7000
    # DiffAugment (training/augment.py) on everything the discriminator sees; "" for none. Without
    # it the discriminator learns the 4,000 digits by heart and the generator drops classes (the
    # 6,000-step run without it had no 5s in 100 samples). Cutout as well (a 14x14 hole, half a
    # digit) cost precision: 0.73 against 0.79 with translation alone, at 16 discriminator features.
    augment: str = "translation"
    seed: int = 0
    checkpoint_every: int = 500


def r1_penalty(disc: torch.nn.Module, real: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over real images x (B, C, H, W) (Mescheder et al. 2018), with their
    labels (B,) for a class-conditional discriminator."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(real, label).sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


def lr_factor(config: StyleGANTrainConfig, step: int) -> float:
    """The learning rates' multiplier at ``step``: 1, then linear to 0 from ``lr_decay_start``."""
    if not 0 < config.lr_decay_start < config.steps or step < config.lr_decay_start:
        return 1.0
    return (config.steps - step) / (config.steps - config.lr_decay_start)


def train_stylegan(out: Path, config: StyleGANTrainConfig) -> Path:
    kind = GANLoss(config.loss)
    if kind not in (GANLoss.NON_SATURATING, GANLoss.LSGAN):
        raise ValueError(f"stylegan trains with loss ns or lsgan, got {config.loss}")
    rng = seed_everything(config.seed)
    train, _ = mnist_splits()
    data = to_model_range(train.images)  # (N, 1, 28, 28)
    net = config.net
    gen, disc = StyleGANGenerator(net), StyleGANDiscriminator(net)
    ema = EMA(gen, config.ema_decay)
    beta1, beta2 = config.betas
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(beta1, beta2))
    # Lazy R1: the discriminator takes k + 1 gradient steps per k of the plain loss, so StyleGAN2
    # shrinks its learning rate and momenta by c = k / (k + 1) to keep their time scales.
    c = config.r1_every / (config.r1_every + 1)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr * c, betas=(beta1**c, beta2**c))
    batch_iter = batches(data, config.batch_size, rng)
    n, layers = config.batch_size, net.style_layers
    policy = parse_policy(config.augment)

    k, digits = net.classes, int(train.labels.max()) + 1
    if k not in (0, digits):
        raise ValueError(f"a class-conditional stylegan has one class per digit, {digits} digits; got {k}")
    labels = torch.from_numpy(train.labels.astype(np.int64)) if k else None  # (N,)

    def judge(images: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        return disc(diff_augment(images, policy, rng), label)

    def fake_batch(track: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Generated images (B, C, 28, 28) and, class-conditional, their classes (B,): the first
        latent's, which sets layer 0 (7x7) of every image, mixed or not."""
        z = torch.randn(n, net.latent_dim, generator=rng)
        z2 = torch.randn(n, net.latent_dim, generator=rng)
        w = gen.mapping(z)  # (B, w_dim)
        if track:
            gen.track_w_avg(w)
        # Style mixing per image: from a random layer in 1 .. L-1 on, z2's w (with prob p); else none.
        mixed = torch.rand(n, generator=rng) < config.style_mixing_prob
        cut = torch.where(mixed, torch.randint(1, layers, (n,), generator=rng), torch.full((n,), layers))
        label = code_one_hot(z, k).argmax(dim=1) if k else None
        return gen.synthesis(mix_styles(w, gen.mapping(z2), cut, layers)), label

    def step_fn(step: int) -> dict[str, float]:
        for opt, lr in ((opt_g, config.lr), (opt_d, config.lr * c)):
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(config, step)  # set every step: a resumed run follows the schedule
        index = next(batch_iter)
        real, real_label = data[index], labels[index] if k else None  # (B, 1, 28, 28), (B,)
        with torch.no_grad():
            fake, fake_label = fake_batch(track=False)
        real = diff_augment(real, policy, rng)  # R1 then regularises D where it looks: augmented reals
        loss_d = discriminator_loss(kind, disc(real, real_label), judge(fake, fake_label))
        losses = {"loss_d": loss_d.item()}
        if config.r1_gamma > 0 and step % config.r1_every == 0:
            r1 = r1_penalty(disc, real, real_label)
            loss_d = loss_d + 0.5 * config.r1_gamma * config.r1_every * r1
            losses["r1"] = r1.item()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        loss_g = generator_loss(kind, judge(*fake_batch(track=True)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(gen, step)
        return {**losses, "loss_g": loss_g.item()}

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "stylegan_generator", ema.model, net, config, step, seconds)
        save_sample_grid(out, sample(ema.model, server_latents(100, net.latent_dim)), step, nrow=10)

    state = {"gen": gen, "disc": disc, "ema": ema.model, "opt_g": opt_g, "opt_d": opt_d}
    run_steps(out, f"stylegan-{kind.value}", config.steps, rng, state, step_fn, checkpoint_fn, config.checkpoint_every)
    return out


@torch.no_grad()
def sample(
    net: StyleGANGenerator,
    z: torch.Tensor,
    psi: float = 1.0,
    mix_z: torch.Tensor | None = None,
    mix_layer: int | None = None,
) -> torch.Tensor:
    """Images (N, C, H, W) of the served graph for latents z (N, D): one psi for all; without
    ``mix_z``, no mixing. Puts ``net`` in eval mode: the served graph's constant noise."""
    n = len(z)
    layer = net.config.style_layers if mix_layer is None else mix_layer
    return net.eval()(
        z, torch.full((n,), float(psi)), z if mix_z is None else mix_z, torch.full((n,), layer, dtype=torch.int64)
    )


def quality(net: StyleGANGenerator, psi: float = 1.0, num: int = 100, seed: int = EVAL_SEED) -> dict:
    """The evaluation classifier's report on ``num`` samples at truncation ``psi``, without mixing,
    from the latents the server draws for a request with ``seed`` (as ``genserve eval``)."""
    from genserve.training.evaluate import Evaluator

    images = to_uint8(sample(net, server_latents(num, net.config.latent_dim, seed), psi))  # (N, 28, 28)
    return Evaluator().evaluate(images).to_dict()


def save_grids(net: StyleGANGenerator, folder: Path, name: str = "stylegan-mnist", k: int = MIXING_LAYER) -> list[Path]:
    """The three documentation grids of a trained generator, in ``folder``:

    - ``<name>.png``: the 100 samples ``quality`` judges at psi = 1 (seed 2026), 10 a row;
    - ``<name>-truncation.png``: a row per latent (images 0-7 of seed 2026), psi = 0, 0.1, ..., 1
      left to right (column 0 is the w_avg image, the same in every row);
    - ``<name>-mixing.png``: the top row holds 6 latents' images (seed MIXING_SEEDS[1]), the left
      column 6 others (seed MIXING_SEEDS[0]); the cell at row i, column j takes row i's w for
      layers < k and column j's w from layer k on (psi = 1)."""
    from genserve.images import save_grid

    d, paths = net.config.latent_dim, []
    samples = sample(net, server_latents(100, d, EVAL_SEED))
    paths.append(save_grid(to_uint8(samples), folder / f"{name}.png", nrow=10))

    psis = np.linspace(0.0, 1.0, 11)
    z = server_latents(8, d, EVAL_SEED)  # (8, D)
    rows = [torch.cat([sample(net, z[r : r + 1], psi) for psi in psis]) for r in range(len(z))]
    paths.append(save_grid(to_uint8(torch.cat(rows)), folder / f"{name}-truncation.png", nrow=len(psis)))

    z_row, z_col = (server_latents(6, d, seed) for seed in MIXING_SEEDS)  # (6, D) each
    blank = -torch.ones(1, *samples.shape[1:])  # the corner: background
    tiles = [blank, sample(net, z_col)]
    for i in range(len(z_row)):
        tiles += [sample(net, z_row[i : i + 1]), sample(net, z_row[i].expand(len(z_col), -1), mix_z=z_col, mix_layer=k)]
    paths.append(save_grid(to_uint8(torch.cat(tiles)), folder / f"{name}-mixing.png", nrow=len(z_col) + 1))
    return paths
