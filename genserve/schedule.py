"""DDPM noise schedule and sampler coefficients (Ho et al. 2020; Song et al. 2021).

Pure float64 NumPy, no I/O, no torch: training (``q_sample``, loss targets), export
(the fused step graph) and serving (per-slot coefficients) all import this module, so
there is exactly one definition of every coefficient.

Naming follows the papers and openai/improved-diffusion: ``alphas_cumprod`` is
ᾱ_t, ``posterior_mean_coef1`` multiplies x̂₀ and ``posterior_mean_coef2`` multiplies x_t
in the mean of q(x_{t-1} | x_t, x₀).

Timesteps are 0-based as in the reference code: t = 0 is the paper's t = 1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

NUM_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02

# Columns of the per-slot coefficient matrix fed to the fused step graph, in order.
# x̂₀ = clip(sqrt_recip_alphas_cumprod·x_t − sqrt_recipm1_alphas_cumprod·ε, ±clip)
# x_{t-1} = coef_x0·x̂₀ + coef_xt·x_t + sigma·z
COEF_COLUMNS = (
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "coef_x0",
    "coef_xt",
    "sigma",
    "clip",
)
NO_CLIP = float(np.finfo(np.float32).max)


class Sampler(enum.Enum):
    """How x_{t-1} is drawn from x_t."""

    DDPM = "ddpm"  # ancestral sampling, Ho et al. Algorithm 2 (strided: respaced betas)
    DDIM = "ddim"  # Song et al. eq. 12, stochasticity set by eta


class VarianceType(enum.Enum):
    FIXED_SMALL = "fixed_small"  # σ²_t = β̃_t, the posterior variance
    FIXED_LARGE = "fixed_large"  # σ²_t = β_t


def linear_betas(num_timesteps: int = NUM_TIMESTEPS, start: float = BETA_START, end: float = BETA_END) -> np.ndarray:
    return np.linspace(start, end, num_timesteps, dtype=np.float64)


@dataclass(frozen=True)
class GaussianDiffusion:
    """Tables for a beta schedule; every array has shape (T,) and dtype float64."""

    betas: np.ndarray

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        object.__setattr__(self, "betas", betas)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    @property
    def sqrt_recip_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 / self.alphas_cumprod)

    @property
    def sqrt_recipm1_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 / self.alphas_cumprod - 1.0)

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef1(self) -> np.ndarray:
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> np.ndarray:
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)

    def q_sample(self, x_start, t, noise):
        """Sample x_t ~ q(x_t | x₀): sqrt(ᾱ_t)·x₀ + sqrt(1 − ᾱ_t)·ε. ``t`` has shape (B,).

        NumPy arrays, or torch tensors (training): the tables are then taken in ``x_start``'s dtype
        and device through its own ``new_tensor``, so this module imports no torch."""
        a, b = self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod
        if not isinstance(x_start, np.ndarray):
            a, b = (x_start.new_tensor(table, dtype=x_start.dtype) for table in (a, b))
        shape = (-1,) + (1,) * (np.ndim(x_start) - 1)
        return a[t].reshape(shape) * x_start + b[t].reshape(shape) * noise


def algorithm2_step(
    diffusion: GaussianDiffusion, x_t: np.ndarray, t: int, eps: np.ndarray, z: np.ndarray, sigma_sq: str = "fixed_small"
) -> np.ndarray:
    """One step of Ho et al.'s Algorithm 2, transcribed literally (no x̂₀ clipping).

    x_{t−1} = 1/sqrt(α_t) · (x_t − (1 − α_t)/sqrt(1 − ᾱ_t) · ε_θ) + σ_t z, with z = 0 at the last step.
    """
    alpha_t = diffusion.alphas[t]
    alpha_bar_t = diffusion.alphas_cumprod[t]
    variance = diffusion.posterior_variance[t] if sigma_sq == "fixed_small" else diffusion.betas[t]
    mean = (x_t - (1.0 - alpha_t) / np.sqrt(1.0 - alpha_bar_t) * eps) / np.sqrt(alpha_t)
    return mean + (np.sqrt(variance) * z if t > 0 else 0.0)


def strided_timesteps(num_steps: int, num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """Evenly spaced timesteps, descending: the sub-schedule for K steps.

    It always starts at T−1 (pure noise) and, for K ≥ 2, ends at t = 0 so the last update is
    the gentlest; K = T gives the full schedule T−1, …, 0, and K = 1 jumps from T−1 to x̂₀.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int64)
    ts = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64)
    return ts[::-1].copy()


def step_coefficients(
    diffusion: GaussianDiffusion,
    num_steps: int,
    sampler: Sampler = Sampler.DDPM,
    eta: float = 1.0,
    variance: VarianceType = VarianceType.FIXED_SMALL,
    clip_denoised: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step timesteps (K,) int64 and coefficients (K, len(COEF_COLUMNS)) float64.

    Row i drives the i-th sampling iteration, from timestep ts[i] to ts[i+1] (or to the
    clean image after the last). The update, for both samplers, is
        x̂₀ = clip(x_t/sqrt(ᾱ_t) − sqrt(1/ᾱ_t − 1)·ε)
        x_prev = coef_x0·x̂₀ + coef_xt·x_t + sigma·z
    DDPM over a strided schedule uses the respaced betas 1 − ᾱ_t/ᾱ_prev (improved-diffusion's
    ``space_timesteps``), which is exactly Algorithm 2 when K = T. DDIM writes eq. 12 in the
    same form: with d = sqrt(1 − ᾱ_prev − σ²), x_prev = sqrt(ᾱ_prev)·x̂₀ + d·ε̂ + σz, where
    ε̂ = (x_t − sqrt(ᾱ_t)·x̂₀)/sqrt(1 − ᾱ_t).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = strided_timesteps(num_steps, diffusion.num_timesteps)
    ab = diffusion.alphas_cumprod[ts]
    ab_prev = np.append(diffusion.alphas_cumprod[ts[1:]], 1.0)
    coefs = np.zeros((num_steps, len(COEF_COLUMNS)), dtype=np.float64)
    coefs[:, 0] = np.sqrt(1.0 / ab)
    coefs[:, 1] = np.sqrt(1.0 / ab - 1.0)
    if sampler is Sampler.DDPM:
        beta = 1.0 - ab / ab_prev  # respaced beta; equals betas[t] for the full schedule
        coefs[:, 2] = beta * np.sqrt(ab_prev) / (1.0 - ab)
        coefs[:, 3] = (1.0 - ab_prev) * np.sqrt(1.0 - beta) / (1.0 - ab)
        small = beta * (1.0 - ab_prev) / (1.0 - ab)
        var = small if variance is VarianceType.FIXED_SMALL else beta
        coefs[:, 4] = np.sqrt(var)
    elif sampler is Sampler.DDIM:
        sigma = eta * np.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        d = np.sqrt(np.clip(1.0 - ab_prev - sigma**2, 0.0, None))
        coefs[:, 2] = np.sqrt(ab_prev) - d * np.sqrt(ab) / np.sqrt(1.0 - ab)
        coefs[:, 3] = d / np.sqrt(1.0 - ab)
        coefs[:, 4] = sigma
    else:  # pragma: no cover - enum is closed
        raise ValueError(f"unknown sampler {sampler}")
    coefs[-1, 4] = 0.0  # no noise is added on the step that produces the final image
    coefs[:, 5] = 1.0 if clip_denoised else NO_CLIP
    return ts, coefs


def default_diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(linear_betas())
