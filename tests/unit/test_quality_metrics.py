"""The sample-quality metrics of ``training/evaluate.py`` on small synthetic feature arrays: the
Inception Score, KID's kernel MMD and k-NN precision/recall, each against a property of its paper."""

import numpy as np
import pytest

from genserve.training.evaluate import (
    NEAREST_K,
    inception_score,
    manifold_radii,
    mmd,
    polynomial_kernel,
    precision_recall,
)

RNG_SEED = 7


def gaussian(n: int, d: int = 64, shift: float = 0.0, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_inception_score_of_certain_equally_used_classes_is_the_number_of_classes():
    for classes in (2, 4, 10):
        probs = np.eye(classes)[np.arange(50 * classes) % classes]  # one-hot, every class 50 times
        assert inception_score(probs) == pytest.approx(classes)


def test_inception_score_is_one_when_every_sample_gets_the_same_distribution():
    row = np.random.default_rng(RNG_SEED).dirichlet(np.ones(10))
    assert inception_score(np.tile(row, (100, 1))) == pytest.approx(1.0)
    assert inception_score(np.eye(10)[np.zeros(100, dtype=int)]) == pytest.approx(1.0)  # certain but collapsed


def test_inception_score_lies_between_one_and_the_number_of_classes():
    probs = np.random.default_rng(RNG_SEED).dirichlet(np.full(10, 0.3), size=200)
    assert 1.0 < inception_score(probs) < 10.0


def test_mmd_is_the_unbiased_u_statistic_written_out():
    a, b = gaussian(6, d=3), gaussian(5, d=3, shift=0.4, seed=1)
    k = lambda x, y: (x @ y / 3 + 1.0) ** 3  # noqa: E731
    within_a = np.mean([k(a[i], a[j]) for i in range(6) for j in range(6) if i != j])
    within_b = np.mean([k(b[i], b[j]) for i in range(5) for j in range(5) if i != j])
    across = np.mean([k(x, y) for x in a for y in b])
    assert mmd(a, b) == pytest.approx(within_a + within_b - 2 * across, rel=1e-12)
    assert polynomial_kernel(a, b).shape == (6, 5)


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    real = gaussian(400)
    # a set against itself differs from 0 only by the left-out diagonal: (2/m)(mean k(x, x') - mean k(x, x))
    diagonal = np.diag(polynomial_kernel(real, real)).mean()
    assert -2 * diagonal / len(real) < mmd(real, real) < 0
    same = mmd(gaussian(400, seed=1), real)  # a second sample of the same Gaussian
    shifted = [mmd(gaussian(400, shift=s, seed=1), real) for s in (0.25, 0.5, 1.0)]
    assert shifted[0] > 10 * abs(same)
    assert shifted == sorted(shifted)


def test_identical_sets_have_full_precision_and_recall():
    real = gaussian(100, d=8)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)


def test_a_collapsed_set_has_full_precision_and_almost_no_recall():
    real = gaussian(100, d=8)
    collapsed = np.repeat(real[17:18], 100, axis=0)  # every sample the same real point
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0
    assert recall == pytest.approx(1 / 100)  # the fake manifold is that one point (radius 0)


def test_dropping_a_mode_keeps_precision_and_halves_recall():
    real = np.concatenate([gaussian(100, d=8), gaussian(100, d=8, shift=50.0, seed=1)])  # two far clusters
    one_mode = gaussian(100, d=8, seed=2)  # fresh samples of the first cluster only
    precision, recall = precision_recall(real, one_mode)
    assert precision > 0.8
    assert 0.35 < recall <= 0.5


def test_far_samples_have_neither_precision_nor_recall():
    assert precision_recall(gaussian(50, d=8), gaussian(50, d=8, shift=100.0, seed=1)) == (0.0, 0.0)


def test_manifold_radius_is_the_distance_to_the_kth_other_point():
    points = np.arange(6, dtype=float)[:, None] ** 2  # 0, 1, 4, 9, 16, 25 on a line
    np.testing.assert_array_equal(manifold_radii(points, k=1), [1, 1, 3, 5, 7, 9])
    np.testing.assert_array_equal(manifold_radii(points, k=3), [9, 8, 5, 8, 12, 21])
    with pytest.raises(ValueError, match="more than"):
        manifold_radii(points[:NEAREST_K])
