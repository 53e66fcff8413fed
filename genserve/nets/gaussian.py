"""The Gaussian (probabilistic PCA) baseline: x = mu + E Lambda^(1/2) z with the mean and the
top-k eigenvectors of the training digits' covariance. Every other sampler must beat it on FID."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GaussianConfig:
    latent_dim: int = 32  # k: FID of 1,000 samples is lowest at 32 among 8, 16, 32, 64, 128
    image_channels: int = 1
    image_size: int = 28


class GaussianModel(nn.Module):
    def __init__(self, config: GaussianConfig):
        super().__init__()
        self.config = config
        dim = config.image_channels * config.image_size**2
        self.register_buffer("mean", torch.zeros(dim))  # (D,) mu in [-1, 1]
        self.register_buffer("basis", torch.zeros(config.latent_dim, dim))  # (k, D) rows: sqrt(lambda_i) e_i

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """Set mean and basis from images (N, C, H, W) in [-1, 1]; returns every eigenvalue, descending."""
        flat = x.reshape(len(x), -1).double()  # (N, D)
        mean = flat.mean(0)
        cov = (flat - mean).T @ (flat - mean) / (len(flat) - 1)  # (D, D)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0).clamp_min(0), eigvecs.flip(1)
        k = self.config.latent_dim
        self.mean.copy_(mean.float())
        self.basis.copy_((eigvecs[:, :k] * eigvals[:k].sqrt()).T.float())
        return eigvals

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, k) -> images (B, C, H, W), clipped to [-1, 1] (a Gaussian has unbounded tails)."""
        c, s = self.config.image_channels, self.config.image_size
        x = z @ self.basis + self.mean  # (B, D)
        return x.clamp(-1.0, 1.0).reshape(-1, c, s, s)
