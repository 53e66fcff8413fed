"""Fit the Gaussian baseline: closed form (mean and top-k eigenvectors), no optimisation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genserve.nets.gaussian import GaussianConfig, GaussianModel
from genserve.training.data import mnist_splits, to_model_range
from genserve.training.loop import save_family_checkpoint, save_sample_grid, server_latents

log = logging.getLogger(__name__)


@dataclass
class GaussianTrainConfig:
    net: GaussianConfig = field(default_factory=GaussianConfig)
    seed: int = 0  # unused (the fit is deterministic); kept so every family takes --seed


def train_gaussian(out: Path, config: GaussianTrainConfig) -> Path:
    t0 = time.time()
    train, _ = mnist_splits()
    model = GaussianModel(config.net)
    eigvals = model.fit(to_model_range(train.images))
    kept = float(eigvals[: config.net.latent_dim].sum() / eigvals.sum())
    log.info("top %d components explain %.1f%% of the variance", config.net.latent_dim, 100 * kept)
    save_family_checkpoint(out, "gaussian", model, config.net, config, 1, time.time() - t0)
    with torch.no_grad():
        save_sample_grid(out, model(server_latents(64, config.net.latent_dim)), 1)
    return out
