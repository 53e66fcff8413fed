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


# --- the same noise, computed where a torch engine's tensors live (a CUDA device, or the CPU) ---------
# torch has no uint64 arithmetic, so the words are int64: +, * and ^ give the same 64 bits (two's
# complement wraps as uint64 does), and a logical right shift is an arithmetic one masked to its bits.
# The uniforms and Box-Muller run in float64 as above, so the result equals ``gaussian`` to the last
# float32 bit on the CPU and to float64 rounding of log/cos elsewhere.


def _signed(word: np.uint64) -> int:
    return int(word) - (1 << 64) if int(word) >= 1 << 63 else int(word)


_GOLDEN_I, _M1_I, _M2_I = _signed(_GOLDEN), _signed(_M1), _signed(_M2)


def _srl(z, bits: int):
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix_torch(z):
    z = z + _GOLDEN_I
    z = (z ^ _srl(z, 30)) * _M1_I
    z = (z ^ _srl(z, 27)) * _M2_I
    return z ^ _srl(z, 31)


def slot_keys_torch(seeds, indices, steps):
    """``slot_keys`` on int64 tensors of shape (B,), as int64 words; no host sync."""
    return _mix_torch(_mix_torch(_mix_torch(seeds) ^ indices) ^ steps)


def gaussian_torch(seeds, indices, steps, shape: tuple[int, ...]):
    """``gaussian`` on int64 tensors (B,) on any device: float32 (B, *shape) on that device."""
    import torch

    keys = slot_keys_torch(seeds, indices, steps)  # (B,)
    n = int(np.prod(shape))
    counters = torch.arange(1, 2 * n + 1, dtype=torch.int64, device=keys.device) * _GOLDEN_I  # (2n,)
    bits = _mix_torch(keys[:, None] + counters[None, :])  # (B, 2n)
    uniforms = _srl(bits, 11).to(torch.float64) * (1.0 / 2**53)  # [0, 1)
    u1 = 1.0 - uniforms[:, :n]
    u2 = uniforms[:, n:]
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(_TWO_PI * u2)
    return normal.to(torch.float32).reshape((keys.shape[0], *shape))
