"""The counter-based noise computed by torch (where a device engine's slots live) is the NumPy noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genserve import noise

torch = pytest.importorskip("torch", reason="the device noise is torch's; torch is a base dependency")

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(int64s, st.integers(0, 10_000), st.integers(-1, 1000)), min_size=1, max_size=6))
def test_torch_noise_equals_numpy_noise_bit_for_bit(slots):
    seeds, index, steps = (np.array(column, dtype=np.int64) for column in zip(*slots, strict=True))
    want = noise.gaussian(seeds, index, steps, (1, 5, 3))
    got = noise.gaussian_torch(torch.from_numpy(seeds), torch.from_numpy(index), torch.from_numpy(steps), (1, 5, 3))
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    np.testing.assert_array_equal(got.numpy(), want)


def test_torch_slot_keys_are_the_uint64_keys_as_int64_words():
    seeds = np.array([0, 1, 2**62, -7], dtype=np.int64)
    index, steps = np.arange(4, dtype=np.int64), np.array([0, 1, -1, 999], dtype=np.int64)
    want = noise.slot_keys(seeds, index, steps).view(np.int64)
    got = noise.slot_keys_torch(torch.from_numpy(seeds), torch.from_numpy(index), torch.from_numpy(steps))
    np.testing.assert_array_equal(got.numpy(), want)


def test_each_slot_of_a_torch_batch_draws_what_it_draws_alone():
    seeds, index, steps = (torch.tensor(v, dtype=torch.int64) for v in ([3, 3, 9], [0, 1, 0], [5, 5, 2]))
    batch = noise.gaussian_torch(seeds, index, steps, (2, 4, 4))
    for i in range(3):
        alone = noise.gaussian_torch(seeds[i : i + 1], index[i : i + 1], steps[i : i + 1], (2, 4, 4))
        assert torch.equal(batch[i : i + 1], alone)
    assert not torch.equal(batch[0], batch[1])  # another image index, another stream
