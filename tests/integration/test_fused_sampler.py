"""The served diffusion loop (fused ONNX step graph on ONNX Runtime, per-slot coefficients,
counter-based noise) against direct transcriptions of the papers' samplers, same network,
same noise."""

from pathlib import Path

import numpy as np
import pytest
import torch

from genserve import noise, schedule
from genserve.export.onnx_export import export_model_folder
from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.unet import UNet, UNetConfig
from genserve.serving.domain import GenerateRequest
from genserve.serving.runner import ModelRunner

D = schedule.default_diffusion()
SHAPE = (1, 28, 28)
SEED = 3
N = 2


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory) -> Path:
    """A small UNet with every weight random (no zero-initialised layers), exported."""
    root = tmp_path_factory.mktemp("fused")
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, dropout=0.0))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_checkpoint(root / "ck", "unet", net.eval(), net.config)
    export_model_folder(root / "ck", root / "ddpm-test", "ddpm-test")
    return root / "ddpm-test"


@pytest.fixture(scope="module")
def eps_model(ddpm_folder):
    net, _ = load_checkpoint(ddpm_folder / "weights")

    @torch.no_grad()
    def eps(x: np.ndarray, t: int) -> np.ndarray:
        out = net(torch.from_numpy(x.astype(np.float32)), torch.full((len(x),), t, dtype=torch.int64))
        return out.double().numpy()

    return eps


def draw(step: int) -> np.ndarray:
    """The server's noise for this request's images at iteration ``step`` (0 = x_T)."""
    return noise.gaussian(np.full(N, SEED), np.arange(N), np.full(N, step), SHAPE).astype(np.float64)


def served(folder: Path, **request) -> np.ndarray:
    return ModelRunner(folder).generate_float(GenerateRequest("ddpm-test", N, seed=SEED, **request))


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 graph vs float64 transcription over many steps: relative to the signal size."""
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 1e-3 * scale, np.abs(got - want).max() / scale


def test_served_ddpm_loop_equals_algorithm2_given_the_same_noise(ddpm_folder, eps_model):
    x = draw(0)
    for i, t in enumerate(range(999, -1, -1)):
        x = schedule.algorithm2_step(D, x, t, eps_model(x, t), draw(i + 1))
    got = served(ddpm_folder, steps=1000, sampler=schedule.Sampler.DDPM, clip_denoised=False)
    assert_close(got, x)


def test_served_ddpm_with_clipping_equals_ho_reference_p_sample(ddpm_folder, eps_model):
    """Ho et al.'s code (and improved-diffusion's p_sample): clip x̂₀, then the posterior mean."""
    x = draw(0)
    for i, t in enumerate(range(999, -1, -1)):
        x0 = np.clip(D.sqrt_recip_alphas_cumprod[t] * x - D.sqrt_recipm1_alphas_cumprod[t] * eps_model(x, t), -1, 1)
        mean = D.posterior_mean_coef1[t] * x0 + D.posterior_mean_coef2[t] * x
        x = mean + (np.sqrt(D.posterior_variance[t]) * draw(i + 1) if t > 0 else 0.0)
    got = served(ddpm_folder, steps=1000, sampler=schedule.Sampler.DDPM)
    assert_close(got, x)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_served_ddim_equals_song_et_al_eq12(ddpm_folder, eps_model, eta):
    """improved-diffusion's ddim_sample: clip x̂₀, re-derive ε, eq. 12 with σ from η."""
    ab = D.alphas_cumprod
    ts = schedule.strided_timesteps(50)
    x = draw(0)
    for i, t in enumerate(ts):
        ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x0 = np.clip((x - np.sqrt(1 - ab[t]) * eps_model(x, int(t))) / np.sqrt(ab[t]), -1, 1)
        eps = (x - np.sqrt(ab[t]) * x0) / np.sqrt(1 - ab[t])
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev)) if i + 1 < len(ts) else 0.0
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma**2) * eps + sigma * draw(i + 1)
    got = served(ddpm_folder, steps=50, sampler=schedule.Sampler.DDIM, eta=eta)
    assert_close(got, x)


def test_images_do_not_depend_on_how_a_request_is_split_into_batches(ddpm_folder):
    """Image i of a 5-image request equals image i computed in engine batches of 2."""
    whole = ModelRunner(ddpm_folder)
    split = ModelRunner(ddpm_folder)
    split.engine.max_batch_size = 2
    req = GenerateRequest("ddpm-test", 5, seed=11, steps=20)
    np.testing.assert_allclose(split.generate_float(req), whole.generate_float(req), atol=1e-5)


def test_request_level_diffusion_of_mixed_seeds_gives_each_seeds_own_image(ddpm_folder):
    """``diffuse_images`` (the request-level loop of the Triton benchmark peer) batches images of
    different seeds and returns what each seed's own request returns."""
    runner = ModelRunner(ddpm_folder)
    request = GenerateRequest("ddpm-test", 1, steps=5)
    got = runner.diffuse_images(np.array([3, 8, 3]), np.array([0, 0, 1]), request)
    own = [runner.generate(GenerateRequest("ddpm-test", 2, seed=s, steps=5)) for s in (3, 8)]
    np.testing.assert_array_equal(got, np.stack([own[0][0], own[1][0], own[0][1]]))
