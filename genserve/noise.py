"""Counter-based Gaussian noise: a pure function of (seed, image index, step, element).

A request's noise never depends on which other requests share its batch, because no
stream state is shared: every value is a hash of its own coordinates (SplitMix64 finaliser
over a combined key) turned Gaussian by the Box-Muller transform. Vectorised over a whole
batch of slots, each with its own (seed, index, step).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * np.pi

# Step counter used for the starting noise x_T (and GAN latents); sampling iteration i uses i + 1.
INITIAL_STEP = 0


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser; uint64 arithmetic wraps modulo 2**64 by design."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def slot_keys(seeds: np.ndarray, indices: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """One uint64 key per slot from its (seed, image index, step); all inputs shape (B,)."""
    seeds = np.asarray(seeds, dtype=np.int64).astype(np.uint64)
    indices = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    steps = np.asarray(steps, dtype=np.int64).astype(np.uint64)
    return _mix(_mix(_mix(seeds) ^ indices) ^ steps)


def gaussian(seeds: np.ndarray, indices: np.ndarray, steps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of shape (B, *shape), float32, one independent stream per slot."""
    keys = slot_keys(seeds, indices, steps)  # (B,)
    n = int(np.prod(shape))
    counters = np.arange(1, 2 * n + 1, dtype=np.uint64)  # two uniforms per element
    with np.errstate(over="ignore"):
        bits = _mix(keys[:, None] + counters[None, :] * _GOLDEN)  # (B, 2n)
    uniforms = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)  # [0, 1)
    u1 = 1.0 - uniforms[:, :n]  # (0, 1], safe for log
    u2 = uniforms[:, n:]
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)
    return normal.astype(np.float32).reshape((len(keys),) + tuple(shape))
