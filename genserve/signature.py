"""Graph signatures: input/output names, dtypes, shapes, dynamic axes, sample inputs and
TensorRT shape profiles, defined once. Export, engine builds and serving all read these,
so a name or an axis cannot drift between them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from genserve import schedule

BATCH = -1  # the dynamic batch axis in a shape


class ModelKind(enum.Enum):
    SAMPLER = "sampler"  # latent (and label) -> image, one forward pass
    TRANSLATOR = "translator"  # image -> image, one forward pass
    DIFFUSION = "diffusion"  # one fused denoising step, called once per timestep
    AUTOREGRESSIVE = "autoregressive"  # one fused "sample the next pixel" step, called once per pixel

    @property
    def iterative(self) -> bool:
        """Served by the step-level scheduler: a step graph called once per step, on slots."""
        return self in (ModelKind.DIFFUSION, ModelKind.AUTOREGRESSIVE)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # NumPy dtype name: float32, int64, uint8
    shape: tuple[int, ...]  # BATCH (-1) marks the dynamic batch axis

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else d for d in self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(int(x) for x in d["shape"]))


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def sample_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right dtypes and shapes, for parity checks and warm-up."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for spec in self.inputs:
            shape = spec.concrete(batch)
            if spec.name == "label":
                feeds[spec.name] = rng.integers(0, 10, size=shape, dtype=np.int64)
            elif spec.name == "mix_layer":
                feeds[spec.name] = rng.integers(0, 8, size=shape, dtype=np.int64)
            elif spec.name == "psi":
                feeds[spec.name] = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
            elif spec.name == "guidance":
                feeds[spec.name] = rng.uniform(0.0, 5.0, size=shape).astype(np.float32)
            elif spec.dtype == "int64":
                feeds[spec.name] = rng.integers(0, schedule.NUM_TIMESTEPS, size=shape, dtype=np.int64)
            elif spec.name == "coef":
                feeds[spec.name] = _sample_coefficients(rng, batch)
            elif spec.name == "image":  # a likelihood graph's input: uint8 levels v / 127.5 - 1, its domain
                # Sparse, as digits are (about 80% background): on dense white noise a deep flow is
                # ill-conditioned in float32 itself (realnvp-mnist: PyTorch float32 is 2.5e-4 off
                # float64 there, relative, at up to 24,000 bits/dim), which no parity check can beat.
                levels = rng.integers(0, 256, size=shape) * (rng.random(shape) < 0.2)
                feeds[spec.name] = (levels / 127.5 - 1.0).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return feeds

    def profile(self, max_batch: int, opt_batch: int | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT optimisation profile: (min, opt, max) shape for every input."""
        opt = opt_batch or max(1, max_batch // 2)
        return {s.name: (s.concrete(1), s.concrete(opt), s.concrete(max_batch)) for s in self.inputs}


def _sample_coefficients(rng: np.random.Generator, batch: int) -> np.ndarray:
    """Real per-slot coefficient rows (random steps of random samplers), not arbitrary numbers."""
    diffusion = schedule.default_diffusion()
    rows = []
    for _ in range(batch):
        sampler = schedule.Sampler.DDPM if rng.random() < 0.5 else schedule.Sampler.DDIM
        _, coefs = schedule.step_coefficients(diffusion, int(rng.integers(1, 101)), sampler, eta=float(rng.random()))
        rows.append(coefs[rng.integers(len(coefs))])
    return np.stack(rows).astype(np.float32)


# The inputs every step graph takes first, in this order; the ones after them are the slot's
# conditioning (class label, guidance scale), kept per slot by the slot state.
STEP_INPUTS = ("x", "t", "coef", "noise")


def diffusion_step_signature(image_shape: tuple[int, ...], num_classes: int | None = None) -> Signature:
    """x_t, t, per-slot coefficients and noise -> x_{t-1}; a class-conditional (guided) step also
    takes an int64 label and a float32 classifier-free guidance scale per slot. ``image_shape``
    is the shape of the diffused state: an image, or a latent vector (latent diffusion)."""
    img = (BATCH, *image_shape)
    inputs = (
        TensorSpec("x", "float32", img),
        TensorSpec("t", "int64", (BATCH,)),
        TensorSpec("coef", "float32", (BATCH, len(schedule.COEF_COLUMNS))),
        TensorSpec("noise", "float32", img),
    )
    if num_classes is not None:
        inputs += (TensorSpec("label", "int64", (BATCH,)), TensorSpec("guidance", "float32", (BATCH,)))
    return Signature(inputs=inputs, outputs=(TensorSpec("x_prev", "float32", img),))


def latent_sampler_signature(
    latent_dim: int, image_shape: tuple[int, int, int], num_classes: int | None = None
) -> Signature:
    """z (and, for a class-conditional model, an int64 class label per row) -> image in [-1, 1]."""
    inputs = (TensorSpec("z", "float32", (BATCH, latent_dim)),)
    if num_classes is not None:
        inputs += (TensorSpec("label", "int64", (BATCH,)),)
    return Signature(inputs=inputs, outputs=(TensorSpec("image", "float32", (BATCH, *image_shape)),))


def translator_signature(input_shape: tuple[int, int, int], image_shape: tuple[int, int, int]) -> Signature:
    """image in [-1, 1] (C, h, w) -> image in [-1, 1] (C, H, W); the sizes may differ (super-resolution)."""
    return Signature(
        inputs=(TensorSpec("source", "float32", (BATCH, *input_shape)),),
        outputs=(TensorSpec("image", "float32", (BATCH, *image_shape)),),
    )


def autoregressive_step_signature(
    image_shape: tuple[int, int, int], num_classes: int | None = None, guided: bool = False
) -> Signature:
    """One pixel of an autoregressive model (PixelCNN), in the step graphs' contract:

    - ``x`` (B, C, H, W) float32: the image so far in [-1, 1] (pixels at and after ``t`` are ignored);
    - ``t`` (B,) int64: the position this step samples, row-major over (H, W), all channels at once;
    - ``coef`` (B, 6) float32: column 0 is 1 / temperature (the logits are multiplied by it);
    - ``noise`` (B, C, H, W) float32: counter-based Gaussian noise; the pixel's uniform draw is
      Phi(noise at position t), so the sample is batch-invariant;
    - ``label`` (B,) int64 for a class-conditional model;
    - ``guidance`` (B,) float32 for a guided one: the classifier-free guidance scale per slot;
    -> ``x_next`` (B, C, H, W): ``x`` with position ``t`` set to the sampled level and later
    positions zeroed."""
    img = (BATCH, *image_shape)
    inputs = (
        TensorSpec("x", "float32", img),
        TensorSpec("t", "int64", (BATCH,)),
        TensorSpec("coef", "float32", (BATCH, len(schedule.COEF_COLUMNS))),
        TensorSpec("noise", "float32", img),
    )
    if num_classes is not None:
        inputs += (TensorSpec("label", "int64", (BATCH,)),)
        if guided:
            inputs += (TensorSpec("guidance", "float32", (BATCH,)),)
    return Signature(inputs=inputs, outputs=(TensorSpec("x_next", "float32", img),))


def style_sampler_signature(latent_dim: int, image_shape: tuple[int, int, int]) -> Signature:
    """A style-based generator (StyleGAN) with per-image truncation and style mixing:
    z (B, D), psi (B,) float32 (w <- w_avg + psi (w - w_avg); 1 = no truncation), mix_z (B, D) (a
    second latent) and mix_layer (B,) int64 (synthesis layers from this one on take mix_z's w;
    >= the number of layers: no mixing) -> image in [-1, 1]."""
    return Signature(
        inputs=(
            TensorSpec("z", "float32", (BATCH, latent_dim)),
            TensorSpec("psi", "float32", (BATCH,)),
            TensorSpec("mix_z", "float32", (BATCH, latent_dim)),
            TensorSpec("mix_layer", "int64", (BATCH,)),
        ),
        outputs=(TensorSpec("image", "float32", (BATCH, *image_shape)),),
    )


def decoder_signature(latent_dim: int, image_shape: tuple[int, int, int]) -> Signature:
    """latent (B, D) -> image in [-1, 1]: the decoder a latent diffusion model's slots finish through."""
    return Signature(
        inputs=(TensorSpec("latent", "float32", (BATCH, latent_dim)),),
        outputs=(TensorSpec("image", "float32", (BATCH, *image_shape)),),
    )


def likelihood_signature(image_shape: tuple[int, int, int]) -> Signature:
    """image in [-1, 1] (B, C, H, W), uint8 levels v / 127.5 - 1 -> bits_per_dim (B,) float32: the
    model's negative log-likelihood of the discrete image in bits per pixel value."""
    return Signature(
        inputs=(TensorSpec("image", "float32", (BATCH, *image_shape)),),
        outputs=(TensorSpec("bits_per_dim", "float32", (BATCH,)),),
    )
