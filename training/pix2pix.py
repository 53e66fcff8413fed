"""pix2pix training on (edge map -> digit) pairs: conditional PatchGAN adversarial loss (the
discriminator sees source and image stacked) + ``l1_weight`` * L1, Adam(2e-4, beta1 = 0.5), as in
Isola et al. (2017). ``l1_only`` trains the same generator without the discriminator: the
baseline that shows what the adversarial term adds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from genserve.nets.pix2pix import PatchDiscriminator, UNetGenerator, UNetTranslatorConfig
from genserve.training.data import batches, edge_map, mnist_splits, to_model_range
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss
from genserve.training.loop import run_steps, save_family_checkpoint, save_sample_grid, seed_everything


@dataclass
class Pix2PixTrainConfig:
    net: UNetTranslatorConfig = field(default_factory=UNetTranslatorConfig)
    l1_only: bool = False
    l1_weight: float = 100.0
    disc_features: int = 32
    steps: int = 4000
    batch_size: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0
    checkpoint_every: int = 500


def edge_pairs(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 digits (N, 28, 28) -> (edge maps, digits), both (N, 1, 28, 28) in [-1, 1]."""
    return to_model_range(edge_map(digits)), to_model_range(digits)


def train_pix2pix(out: Path, config: Pix2PixTrainConfig) -> Path:
    generator = seed_everything(config.seed)
    train, held_out = mnist_splits()
    sources, targets = edge_pairs(train.images)
    gen = UNetGenerator(config.net)
    disc = PatchDiscriminator(config.net.in_channels + config.net.out_channels, config.disc_features)
    betas = (config.beta1, 0.999)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas)
    batch_iter = batches(sources, config.batch_size, generator)
    kind = GANLoss.NON_SATURATING

    def step_fn(step: int) -> dict[str, float]:
        idx = next(batch_iter)
        source, target = sources[idx], targets[idx]  # (B, 1, 28, 28) each
        fake = gen(source)
        losses = {}
        if not config.l1_only:
            loss_d = discriminator_loss(
                kind, disc(torch.cat([source, target], 1)), disc(torch.cat([source, fake.detach()], 1))
            )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            losses["loss_d"] = loss_d.item()
        l1 = F.l1_loss(fake, target)
        loss_g = config.l1_weight * l1
        if not config.l1_only:
            loss_g = loss_g + generator_loss(kind, disc(torch.cat([source, fake], 1)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        return {**losses, "l1": l1.item()}

    preview_sources, _ = edge_pairs(held_out.images[:32])

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "unet_translator", gen, config.net, config, step, seconds)
        gen.eval()
        with torch.no_grad():
            save_sample_grid(out, torch.cat([preview_sources, gen(preview_sources)]), step)
        gen.train()

    state = {"gen": gen, "disc": disc, "opt_g": opt_g, "opt_d": opt_d}
    name = "pix2pix-l1" if config.l1_only else "pix2pix"
    run_steps(out, name, config.steps, generator, state, step_fn, checkpoint_fn, config.checkpoint_every)
    return out
