"""The fused diffusion step: UNet + sampler update in one graph, x_{t-1} = f(x_t, t, coef, noise).

This module is what gets exported to ONNX and what the PyTorch backend runs, so there is one
definition of the update. Per-slot coefficients (columns ``schedule.COEF_COLUMNS``) come in as
an input, so one graph serves DDPM, strided DDPM and DDIM at any step count, with every slot of
a batch at its own timestep. A class-conditional UNet is served as ``GuidedDiffusionStep``:
the same update on the classifier-free-guided ε, with a label and a guidance scale per slot.
``AutoGuidedDiffusionStep`` (two unconditional UNets, one fixed scale) is not served: it is the
teacher that ``ddpm-mnist``'s weights were distilled from, and the reference that measures them.
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
        return update(self.unet(x, t), x, coef, noise)


class GuidedDiffusionStep(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) fused into the step: one UNet call on the
    batch twice over (with each slot's label, then with the null label), combined per slot as
    ε = ε_u + w (ε_c − ε_u). w = 1 is the plain conditional model, w = 0 the unconditional one,
    w > 1 trades diversity for class fidelity (the convention of diffusers' ``guidance_scale``)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        if unet.null_label is None:
            raise ValueError("classifier-free guidance needs a class-conditional UNet")
        self.unet = unet

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        coef: torch.Tensor,
        noise: torch.Tensor,
        label: torch.Tensor,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        """As DiffusionStep, plus label (B,) int64 and guidance (B,) float32 per slot."""
        b = x.shape[0]
        labels = torch.cat([label, torch.full_like(label, self.unet.null_label)])
        eps = self.unet(torch.cat([x, x]), torch.cat([t, t]), labels)  # (2B, C, H, W)
        eps_c, eps_u = eps[:b], eps[b:]
        w = guidance[:, None, None, None]
        return update(eps_u + w * (eps_c - eps_u), x, coef, noise)


class AutoGuidedDiffusionStep(nn.Module):
    """Autoguidance (Karras et al. 2024): an unconditional UNet guided by a smaller, shorter-trained
    one of the same data, ε = ε_guide + w (ε_unet − ε_guide), then the usual update. w = 1 is the
    UNet alone; w > 1 moves samples away from what the weak model gets wrong. Two networks per
    step, one scale for all slots."""

    def __init__(self, unet: nn.Module, guide: nn.Module, guidance: float):
        super().__init__()
        self.unet, self.guide, self.guidance = unet, guide, guidance

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided prediction (B, C, H, W): also the target ``ddpm-mnist`` was distilled on."""
        eps_guide = self.guide(x, t)
        return eps_guide + self.guidance * (self.unet(x, t) - eps_guide)

    def forward(self, x: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return update(self.eps(x, t), x, coef, noise)


def step_module(unet: nn.Module) -> nn.Module:
    """The step graph a UNet is served as: guided if it is class-conditional."""
    return GuidedDiffusionStep(unet) if getattr(unet, "null_label", None) is not None else DiffusionStep(unet)


def update(eps: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The sampler update from the predicted ε, with per-slot coefficients (``schedule.COEF_COLUMNS``):
    x̂₀ = c0·x − c1·ε clipped to ±c5, then x_prev = c2·x̂₀ + c3·x + c4·noise. ``x`` has any rank:
    an image (B, C, H, W) or a latent vector (B, D) (latent diffusion)."""
    c = coef[(slice(None), slice(None)) + (None,) * (x.dim() - 2)]  # (B, 6, 1, 1) for an image, (B, 6) for a vector
    x0 = c[:, 0:1] * x - c[:, 1:2] * eps
    clip = c[:, 5:6]
    x0 = torch.minimum(torch.maximum(x0, -clip), clip)
    return c[:, 2:3] * x0 + c[:, 3:4] * x + c[:, 4:5] * noise


@torch.no_grad()
def sample(
    step: nn.Module,
    num_images: int,
    seed: int,
    image_shape: tuple[int, int, int],
    num_steps: int = schedule.NUM_TIMESTEPS,
    sampler: schedule.Sampler = schedule.Sampler.DDPM,
    eta: float = 1.0,
    diffusion: schedule.GaussianDiffusion | None = None,
    labels: np.ndarray | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Reference loop in PyTorch with the server's noise keys: image i of a request with seed s
    starts from gaussian(s, i, 0) and draws gaussian(s, i, k + 1) at iteration k. A
    ``GuidedDiffusionStep`` takes ``labels`` (num_images,) and one ``guidance`` scale."""
    extra = ()
    if isinstance(step, GuidedDiffusionStep):
        if labels is None:
            raise ValueError("a guided step needs labels")
        extra = (torch.as_tensor(labels, dtype=torch.int64), torch.full((num_images,), guidance, dtype=torch.float32))
    diffusion = diffusion or schedule.default_diffusion()
    ts, coefs = schedule.step_coefficients(diffusion, num_steps, sampler, eta)
    seeds = np.full(num_images, seed)
    index = np.arange(num_images)
    x = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(num_images, noise_lib.INITIAL_STEP), image_shape))
    for k, (t, c) in enumerate(zip(ts, coefs, strict=True)):
        z = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(num_images, k + 1), image_shape))
        tt = torch.full((num_images,), int(t), dtype=torch.int64)
        cc = torch.from_numpy(np.tile(c.astype(np.float32), (num_images, 1)))
        x = step(x, tt, cc, z, *extra)
    return x
