"""The diffusion schedule against closed forms (Ho et al. 2020; Song et al. 2021)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genserve import schedule
from genserve.schedule import COEF_COLUMNS, Sampler, VarianceType

D = schedule.default_diffusion()
COL = {name: i for i, name in enumerate(COEF_COLUMNS)}


def apply(coef: np.ndarray, x_t: np.ndarray, eps: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The fused step's update, written out (what DiffusionStep computes)."""
    x0 = coef[COL["sqrt_recip_alphas_cumprod"]] * x_t - coef[COL["sqrt_recipm1_alphas_cumprod"]] * eps
    x0 = np.clip(x0, -coef[COL["clip"]], coef[COL["clip"]])
    return coef[COL["coef_x0"]] * x0 + coef[COL["coef_xt"]] * x_t + coef[COL["sigma"]] * z


def test_linear_betas_match_ho_et_al():
    assert D.num_timesteps == 1000
    assert D.betas.dtype == np.float64
    assert D.betas[0] == pytest.approx(1e-4) and D.betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(D.betas), (0.02 - 1e-4) / 999)


def test_alphas_cumprod_is_running_product():
    expected = np.array([np.prod(1.0 - D.betas[: t + 1]) for t in range(0, 1000, 37)])
    np.testing.assert_allclose(D.alphas_cumprod[::37], expected, rtol=1e-12)
    assert D.alphas_cumprod_prev[0] == 1.0


def test_q_sample_has_closed_form_moments():
    rng = np.random.default_rng(0)
    x0 = np.full((20000, 1), 0.5)
    for t in (0, 250, 999):
        xt = D.q_sample(x0, np.full(len(x0), t), rng.standard_normal(x0.shape))
        assert xt.mean() == pytest.approx(np.sqrt(D.alphas_cumprod[t]) * 0.5, abs=0.02)
        assert xt.var() == pytest.approx(1.0 - D.alphas_cumprod[t], rel=0.05, abs=1e-4)


def test_q_sample_on_torch_tensors_is_the_numpy_one_in_their_dtype():
    """Training calls q_sample on float32 tensors: the same formula, the tables in float32."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 6, 1, 4, 4)).astype(np.float32)
    t = np.array([0, 1, 250, 500, 998, 999])
    got = D.q_sample(torch.from_numpy(x0), torch.from_numpy(t), torch.from_numpy(eps))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), D.q_sample(x0.astype(np.float64), t, eps.astype(np.float64)), atol=1e-6)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0): product of two Gaussians."""
    rng = np.random.default_rng(1)
    for t in (1, 10, 500, 999):
        x0, xt = rng.standard_normal(2)
        precision = D.alphas[t] / D.betas[t] + 1.0 / (1.0 - D.alphas_cumprod_prev[t])
        mean = (
            np.sqrt(D.alphas[t]) * xt / D.betas[t]
            + np.sqrt(D.alphas_cumprod_prev[t]) * x0 / (1.0 - D.alphas_cumprod_prev[t])
        ) / precision
        assert D.posterior_variance[t] == pytest.approx(1.0 / precision, rel=1e-10)
        assert D.posterior_mean_coef1[t] * x0 + D.posterior_mean_coef2[t] * xt == pytest.approx(mean, rel=1e-10)


@pytest.mark.parametrize("variance", list(VarianceType))
def test_full_ddpm_coefficients_reproduce_algorithm2(variance):
    ts, coefs = schedule.step_coefficients(D, 1000, Sampler.DDPM, variance=variance, clip_denoised=False)
    np.testing.assert_array_equal(ts, np.arange(999, -1, -1))
    rng = np.random.default_rng(2)
    sigma_sq = "fixed_small" if variance is VarianceType.FIXED_SMALL else "fixed_large"
    for i in (0, 1, 500, 998, 999):
        x, eps, z = rng.standard_normal((3, 16))
        expected = schedule.algorithm2_step(D, x, int(ts[i]), eps, z, sigma_sq)
        np.testing.assert_allclose(apply(coefs[i], x, eps, z), expected, rtol=1e-9, atol=1e-9)


def test_ddim_eta0_is_deterministic_eq12():
    ts, coefs = schedule.step_coefficients(D, 50, Sampler.DDIM, eta=0.0, clip_denoised=False)
    assert (coefs[:, COL["sigma"]] == 0).all()
    rng = np.random.default_rng(3)
    ab = D.alphas_cumprod
    for i in (0, 25, 49):
        x, eps, z = rng.standard_normal((3, 8))
        ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x0 = (x - np.sqrt(1 - ab[ts[i]]) * eps) / np.sqrt(ab[ts[i]])
        expected = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
        np.testing.assert_allclose(apply(coefs[i], x, eps, z), expected, rtol=1e-9, atol=1e-9)


def test_ddim_eta1_on_full_schedule_has_ddpm_variance():
    _, ddim = schedule.step_coefficients(D, 1000, Sampler.DDIM, eta=1.0)
    _, ddpm = schedule.step_coefficients(D, 1000, Sampler.DDPM)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-7, atol=1e-12)


def test_clip_column_switches_x0_clipping():
    _, on = schedule.step_coefficients(D, 10, clip_denoised=True)
    _, off = schedule.step_coefficients(D, 10, clip_denoised=False)
    assert (on[:, COL["clip"]] == 1.0).all()
    assert (off[:, COL["clip"]] == schedule.NO_CLIP).all()


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 1000), sampler=st.sampled_from(list(Sampler)), eta=st.floats(0.0, 1.0))
def test_every_sub_schedule_is_well_formed(steps, sampler, eta):
    ts, coefs = schedule.step_coefficients(D, steps, sampler, eta=eta)
    assert len(ts) == steps == len(coefs)
    assert ts[0] == 999 and (steps == 1 or ts[-1] == 0)
    assert (np.diff(ts) < 0).all()
    assert np.isfinite(coefs).all()
    assert (coefs[:, COL["sigma"]] >= 0).all() and coefs[-1, COL["sigma"]] == 0


@pytest.mark.parametrize("bad", [0, -1, 1001])
def test_step_count_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        schedule.strided_timesteps(bad)
