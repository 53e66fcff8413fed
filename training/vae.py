"""VAE training: Bernoulli reconstruction log-likelihood on intensities in [0, 1] plus the
closed-form KL to N(0, I) (the negative ELBO per image), reparameterised sampling, Adam."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from genserve.nets.vae import VAE, VAEConfig
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.loop import run_steps, save_family_checkpoint, save_sample_grid, seed_everything, server_latents


@dataclass
class VAETrainConfig:
    net: VAEConfig = field(default_factory=VAEConfig)
    steps: int = 10000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 500


def negative_elbo(vae: VAE, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction NLL, KL), each summed over an image and averaged over the batch."""
    mean, logvar = vae.encode(x)  # (B, k) each
    z = mean + torch.randn(mean.shape, generator=generator) * (0.5 * logvar).exp()
    target = (x + 1.0) / 2.0  # intensities in [0, 1]
    nll = F.binary_cross_entropy_with_logits(vae.decode_logits(z), target, reduction="sum") / len(x)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum() / len(x)
    return nll, kl


def train_vae(out: Path, config: VAETrainConfig) -> Path:
    generator = seed_everything(config.seed)
    train, _ = mnist_splits()
    data = to_model_range(train.images)  # (N, 1, 28, 28)
    vae = VAE(config.net)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    batch_iter = batches(data, config.batch_size, generator)

    def step_fn(step: int) -> dict[str, float]:
        nll, kl = negative_elbo(vae, data[next(batch_iter)], generator)
        opt.zero_grad(set_to_none=True)
        (nll + kl).backward()
        opt.step()
        return {"nll": nll.item(), "kl": kl.item()}

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "vae", vae, config.net, config, step, seconds)
        with torch.no_grad():
            save_sample_grid(out, vae.decode(server_latents(64, config.net.latent_dim)), step)

    run_steps(
        out, "vae", config.steps, generator, {"vae": vae, "opt": opt}, step_fn, checkpoint_fn, config.checkpoint_every
    )
    return out
