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
            elif spec.name == "guidance":
                feeds[spec.name] = rng.uniform(0.0, 5.0, size=shape).astype(np.float32)
            elif spec.dtype == "int64":
                feeds[spec.name] = rng.integers(0, schedule.NUM_TIMESTEPS, size=shape, dtype=np.int64)
            elif spec.name == "coef":
                feeds[spec.name] = _sample_coefficients(rng, batch)
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


def diffusion_step_signature(image_shape: tuple[int, int, int], num_classes: int | None = None) -> Signature:
    """x_t, t, per-slot coefficients and noise -> x_{t-1}; a class-conditional (guided) step also
    takes an int64 label and a float32 classifier-free guidance scale per slot."""
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
