"""Counter-based noise: a pure function of (seed, image index, step)."""

import numpy as np
from scipy import stats

from genserve import noise


def test_same_coordinates_give_identical_noise():
    a = noise.gaussian([7, 7], [0, 1], [3, 3], (1, 28, 28))
    b = noise.gaussian([7, 7], [0, 1], [3, 3], (1, 28, 28))
    np.testing.assert_array_equal(a, b)


def test_a_slot_does_not_depend_on_its_batch_companions():
    alone = noise.gaussian([42], [5], [17], (1, 28, 28))[0]
    crowd = noise.gaussian([1, 42, 9, 42], [0, 5, 5, 6], [17, 17, 17, 17], (1, 28, 28))
    np.testing.assert_array_equal(crowd[1], alone)


def test_seed_index_and_step_each_change_the_noise():
    base = noise.gaussian([1], [0], [0], (64,))[0]
    for seeds, index, steps in (([2], [0], [0]), ([1], [1], [0]), ([1], [0], [1])):
        other = noise.gaussian(seeds, index, steps, (64,))[0]
        assert np.abs(np.corrcoef(base, other)[0, 1]) < 0.5
        assert not np.array_equal(base, other)


def test_values_are_standard_normal():
    x = noise.gaussian(np.arange(50), np.zeros(50), np.zeros(50), (1000,)).ravel()
    assert x.dtype == np.float32
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01
    assert stats.kstest(x[:20000], "norm").pvalue > 1e-3


def test_negative_and_large_seeds_are_valid():
    x = noise.gaussian([-1, 2**62], [0, 0], [0, 0], (8,))
    assert np.isfinite(x).all() and not np.array_equal(x[0], x[1])
