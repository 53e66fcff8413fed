"""The engine contract of iterative models: a backend-owned set of image slots.

An iterative model is served as one fused step graph, x_{t-1} = f(x_t, t, coef, noise, ...):
a diffusion model's denoising step (on an image, or on a latent vector), or an autoregressive
model's "sample pixel t" step. Its sampling state is a set of *slots*, one per image in flight,
and it lives where the engine computes: host memory for ONNX Runtime and TensorRT
(``HostSlots``, here), device memory for the torch and cuda backends (``torch_engine.TorchSlots``).
A latent model's slots are read through its decoder (``DecodedSlots``). The schedulers never see
that state. They
say, at step boundaries, which slots join (with their request's schedule), step, move and leave,
and read back the images of the slots that finished:

- ``join(row, ...)`` starts images at rows ``row..row+k``: x_T from the counter-based noise of
  (seed, image index, step 0), and the request's whole schedule (timesteps, coefficient rows)
  and its conditioning (the step graph's inputs after ``signature.STEP_INPUTS``: class labels,
  guidance scale), kept per slot;
- ``step(n, count)`` runs ``count`` steps on the first ``n`` rows; each slot reads its own
  timestep and coefficients at its own step counter and draws noise keyed (seed, index, step + 1),
  so an image never depends on which slots share the batch;
- ``move(src, dst)`` copies a slot (the scheduler keeps live rows contiguous by swap-removal);
- ``images(rows)`` and ``values(rows)`` read finished (or previewed) slots: uint8 (k, H, W, C)
  and float32 (k, C, H, W).

The step scheduler (``diffusion.DiffusionScheduler``) and the request-level runner
(``runner.ModelRunner``) are the two users of one state type per backend: the stepping loop is
written once, in the state, and the host knows when an image finishes from step counts alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from genserve import images, noise
from genserve.signature import STEP_INPUTS, Signature

# Steps per ``step`` call of the request-level runner, which checks for cancellation between
# calls; a device state replays them as one graph launch.
REPLAY_STEPS = 10


class SlotState(Protocol):
    capacity: int  # rows

    def join(
        self,
        row: int,
        seeds: np.ndarray,
        index: np.ndarray,
        timesteps: np.ndarray,
        coefs: np.ndarray,
        conditioning: dict[str, np.ndarray],
    ) -> None:
        """Start ``len(index)`` images at rows ``row...``: ``timesteps`` (K,) int64 and ``coefs``
        (K, 6) float32 are their schedule; ``conditioning`` holds a per-image array for each
        conditioning input of the step graph (``conditioning_specs``; empty for none)."""
        ...

    def step(self, n: int, count: int = 1) -> None:
        """Run ``count`` steps of every slot in rows [0, n). May return before the device is done."""
        ...

    def move(self, src: int, dst: int) -> None: ...

    def images(self, rows: Sequence[int]) -> np.ndarray:
        """uint8 (k, H, W, C) of the slots at ``rows``, converted where the state lives."""
        ...

    def values(self, rows: Sequence[int]) -> np.ndarray:
        """float32 (k, C, H, W) of the slots at ``rows``: the raw step output, unclipped."""
        ...


def state_shape(signature: Signature) -> tuple[int, ...]:
    """The shape of one slot's state: the step graph's ``x`` without its batch axis."""
    return tuple(signature.inputs[0].shape[1:])


def conditioning_specs(signature: Signature):
    """The step graph's per-slot inputs after x, t, coef and noise, in graph order."""
    names = tuple(spec.name for spec in signature.inputs[: len(STEP_INPUTS)])
    if names != STEP_INPUTS:
        raise ValueError(f"a step graph's first inputs must be {STEP_INPUTS}, got {names}")
    return signature.inputs[len(STEP_INPUTS) :]


class HostSlots:
    """Slot state in host memory, stepped through any ``Engine.run`` that takes NumPy feeds."""

    def __init__(self, engine, capacity: int, max_steps: int):
        self.engine = engine
        self.capacity = capacity
        self.shape = state_shape(engine.signature)
        self._output = engine.signature.output_names[0]
        s = capacity
        self.x = np.zeros((s, *self.shape), np.float32)
        self.seed = np.zeros(s, np.int64)
        self.index = np.zeros(s, np.int64)
        self.steps_done = np.zeros(s, np.int64)
        self.timesteps = np.zeros((s, max_steps), np.int64)  # row i: slot i's schedule
        self.coefs = np.zeros((s, max_steps, 6), np.float32)
        self.conditioning = {c.name: np.zeros(s, c.dtype) for c in conditioning_specs(engine.signature)}
        self._rows = (self.x, self.seed, self.index, self.steps_done, self.timesteps, self.coefs)
        self._rows += tuple(self.conditioning.values())
        self._arange = np.arange(s)

    def join(self, row, seeds, index, timesteps, coefs, conditioning) -> None:
        k, steps = len(index), len(timesteps)
        rows = slice(row, row + k)
        self.x[rows] = noise.gaussian(seeds, index, np.full(k, noise.INITIAL_STEP), self.shape)
        self.seed[rows] = seeds
        self.index[rows] = index
        self.steps_done[rows] = 0
        self.timesteps[rows, :steps] = timesteps
        self.coefs[rows, :steps] = coefs
        for name, values in conditioning.items():
            self.conditioning[name][rows] = values

    def step(self, n: int, count: int = 1) -> None:
        rows = self._arange[:n]
        for _ in range(count):
            k = self.steps_done[:n]
            feeds = {
                "x": self.x[:n],
                "t": self.timesteps[rows, k],
                "coef": self.coefs[rows, k],
                "noise": noise.gaussian(self.seed[:n], self.index[:n], k + 1, self.shape),  # step k draws k + 1
                **{name: values[:n] for name, values in self.conditioning.items()},
            }
            self.x[:n] = self.engine.run(feeds)[self._output]
            self.steps_done[:n] += 1

    def move(self, src: int, dst: int) -> None:
        for a in self._rows:
            a[dst] = a[src]

    def images(self, rows: Sequence[int]) -> np.ndarray:
        return images.to_uint8(self.x[list(rows)])

    def values(self, rows: Sequence[int]) -> np.ndarray:
        return self.x[list(rows)].copy()


class DecodedSlots:
    """A latent model's slots: ``images`` and ``values`` run the finished latents through a decoder
    engine (latent (k, D) -> image (k, C, H, W)), once per read of finished slots; the steps never
    pay for it. Everything else is the wrapped state's."""

    def __init__(self, state: SlotState, decoder):
        self.state = state
        self.decoder = decoder
        self.capacity = state.capacity
        self._output = decoder.signature.output_names[0]
        self._input = decoder.signature.input_names[0]

    def join(self, row, seeds, index, timesteps, coefs, conditioning) -> None:
        self.state.join(row, seeds, index, timesteps, coefs, conditioning)

    def step(self, n: int, count: int = 1) -> None:
        self.state.step(n, count)

    def move(self, src: int, dst: int) -> None:
        self.state.move(src, dst)

    def images(self, rows: Sequence[int]) -> np.ndarray:
        return images.to_uint8(self.values(rows))

    def values(self, rows: Sequence[int]) -> np.ndarray:
        latents = self.state.values(rows)
        out = []
        for start in range(0, len(latents), self.decoder.max_batch_size):
            feeds = {self._input: latents[start : start + self.decoder.max_batch_size]}
            out.append(self.decoder.run(feeds)[self._output])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def open_slots(engine, capacity: int, max_steps: int, decoder=None) -> SlotState:
    """The slot state of ``engine``: its own (a device engine's ``open_slots``) or host memory;
    read through ``decoder`` (an engine) when the slots hold latents."""
    opener = getattr(engine, "open_slots", None)
    state = opener(capacity, max_steps) if opener is not None else HostSlots(engine, capacity, max_steps)
    return state if decoder is None else DecodedSlots(state, decoder)
