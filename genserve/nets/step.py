"""The fused diffusion step: UNet + sampler update in one graph, x_{t-1} = f(x_t, t, coef, noise).

This module is what gets exported to ONNX and what the PyTorch backend runs, so there is one
definition of the update. Per-slot coefficients (columns ``schedule.COEF_COLUMNS``) come in as
an input, so one graph serves DDPM, strided DDPM and DDIM at any step count, with every slot of
a batch at its own timestep.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genserve import noise as noise_lib
from genserve import schedule


class DiffusionStep(nn.Module):
    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), t (B,) int64, coef (B, 6) float32, noise (B, C, H, W) -> x_prev (B, C, H, W)."""
        eps = self.unet(x, t)  # (B, C, H, W)
        c = coef[:, :, None, None]  # (B, 6, 1, 1)
        x0 = c[:, 0:1] * x - c[:, 1:2] * eps
        clip = c[:, 5:6]
        x0 = torch.minimum(torch.maximum(x0, -clip), clip)
        return c[:, 2:3] * x0 + c[:, 3:4] * x + c[:, 4:5] * noise


@torch.no_grad()
def sample(
    step: DiffusionStep,
    num_images: int,
    seed: int,
    image_shape: tuple[int, int, int],
    num_steps: int = schedule.NUM_TIMESTEPS,
    sampler: schedule.Sampler = schedule.Sampler.DDPM,
    eta: float = 1.0,
    diffusion: schedule.GaussianDiffusion | None = None,
) -> torch.Tensor:
    """Reference loop in PyTorch with the server's noise keys: image i of a request with seed s
    starts from gaussian(s, i, 0) and draws gaussian(s, i, k + 1) at iteration k."""
    diffusion = diffusion or schedule.default_diffusion()
    ts, coefs = schedule.step_coefficients(diffusion, num_steps, sampler, eta)
    seeds = np.full(num_images, seed)
    index = np.arange(num_images)
    x = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(num_images, noise_lib.INITIAL_STEP), image_shape))
    for k, (t, c) in enumerate(zip(ts, coefs, strict=True)):
        z = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(num_images, k + 1), image_shape))
        tt = torch.full((num_images,), int(t), dtype=torch.int64)
        cc = torch.from_numpy(np.tile(c.astype(np.float32), (num_images, 1)))
        x = step(x, tt, cc, z)
    return x
