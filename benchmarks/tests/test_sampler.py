"""The sampler benchmark compares like with like: its Algorithm 2 and diffusers loops are the served
update given the same noise, and its report arithmetic is right."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from benchmarks import sampler
from genserve import schedule
from genserve.manifest import DiffusionSpec
from genserve.nets.step import DiffusionStep
from genserve.nets.unet import UNet, UNetConfig

SHAPE = (2, 1, 28, 28)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A batch of 2 through a tiny UNet gains nothing from threads, and on a busy machine several
    OpenMP threads spin against other jobs and make the 1000-step loops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet() -> UNet:
    """The tiny UNet of ``tiny_models`` with every weight random: its output layer is zero-initialised,
    which would make ε ≡ 0 and every comparison trivially true."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=16, groups=4))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


def noises(count: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(count)]


@torch.no_grad()
def fused_loop(unet: UNet, x: torch.Tensor, ts: np.ndarray, coefs: np.ndarray, zs: list[torch.Tensor]) -> torch.Tensor:
    """genserve's fused step, as the served loop drives it, with the given noise."""
    step = DiffusionStep(unet)
    for i, (t, c) in enumerate(zip(ts, coefs, strict=True)):
        tt = torch.full((len(x),), int(t), dtype=torch.int64)
        cc = torch.from_numpy(np.tile(c.astype(np.float32), (len(x), 1)))  # (B, 6)
        x = step(x, tt, cc, zs[i])
    return x


@pytest.mark.parametrize(
    ("num_steps", "variance"),
    [
        (1000, schedule.VarianceType.FIXED_LARGE),  # Algorithm 2 verbatim, as benchmarked
        (25, schedule.VarianceType.FIXED_SMALL),  # strided: respaced betas
    ],
)
def test_algorithm2_transcription_equals_the_fused_step_given_the_same_noise(unet, num_steps, variance):
    """Unclipped sampling with an untrained ε drifts far outside [-1, 1] (|x| ~ 10²), and every step's
    update shows in the result, so the float32 tolerance is relative to the signal: 1e-4 of max |x|."""
    d = schedule.default_diffusion()
    ts, coefs = schedule.step_coefficients(d, num_steps, schedule.Sampler.DDPM, variance=variance, clip_denoised=False)
    x_T, *zs = noises(num_steps + 1)
    want = fused_loop(unet, x_T, ts, coefs, zs)
    got = sampler.algorithm2_sample(unet, x_T, d, ts, lambda i: zs[i], variance=variance)
    assert got.shape == SHAPE and torch.isfinite(got).all()
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= 1e-4 * scale


def test_diffusers_loop_equals_the_fused_step_with_clipping_given_the_same_noise(unet):
    """diffusers draws x_T and then one z per step but the last from the generator; replay those draws."""
    pytest.importorskip("diffusers", reason="diffusers is the optional [bench] extra: pip install -e '.[bench]'")
    spec = DiffusionSpec(num_timesteps=50, beta_end=0.2)  # a short full schedule keeps this fast
    scheduler = sampler.diffusers_scheduler(spec)
    scheduler.set_timesteps(spec.num_timesteps)
    g = torch.Generator().manual_seed(1)
    got = sampler.diffusers_sample(unet, scheduler, torch.randn(SHAPE, generator=g), g)
    ts, coefs = schedule.step_coefficients(spec.gaussian_diffusion(), spec.num_timesteps, schedule.Sampler.DDPM)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(SHAPE, generator=g)
    zs = [torch.randn(SHAPE, generator=g) for _ in range(spec.num_timesteps - 1)] + [torch.zeros(SHAPE)]
    want = fused_loop(unet, x_T, ts, coefs, zs)
    assert got.shape == SHAPE and torch.isfinite(got).all()
    # clipped x̂₀ keeps |x| <= ~1; diffusers' float32 schedule tables vs genserve's float64 cost ~1e-6
    assert float((got - want).abs().max()) <= 1e-4


def test_both_torch_loops_run_on_a_few_steps_with_finite_images_of_the_right_shape(unet):
    d = schedule.default_diffusion()
    x_T, *zs = noises(5)
    out = sampler.algorithm2_sample(unet, x_T, d, schedule.strided_timesteps(5), lambda i: zs[i])
    assert out.shape == SHAPE and torch.isfinite(out).all()
    pytest.importorskip("diffusers", reason="diffusers is the optional [bench] extra: pip install -e '.[bench]'")
    scheduler = sampler.diffusers_scheduler(DiffusionSpec())
    scheduler.set_timesteps(5)
    out = sampler.diffusers_sample(unet, scheduler, x_T, torch.Generator().manual_seed(0))
    assert out.shape == SHAPE and torch.isfinite(out).all()


def test_speed_report_derives_throughput_speedups_and_loop_overhead_from_timings():
    seconds = {"diffusers": 40.0, "algorithm2": 20.0, "fused": 10.0}
    report = sampler.speed_report(seconds, engine_step_seconds=0.008, batch=16, steps=1000)
    assert report["images_per_second"] == {"diffusers": 0.4, "algorithm2": 0.8, "fused": 1.6}
    assert report["speedup_vs_diffusers"] == pytest.approx(4.0)
    assert report["speedup_vs_algorithm2"] == pytest.approx(2.0)
    assert report["loop_overhead"] == pytest.approx(10.0 / (1000 * 0.008))  # 1.25: 25% outside the graph
    assert report["seconds"] == seconds


def test_speed_report_rejects_missing_or_nonpositive_timings():
    with pytest.raises(ValueError, match="fused"):
        sampler.speed_report({"diffusers": 1.0, "algorithm2": 1.0}, 0.01, 16, 10)
    with pytest.raises(ValueError, match="positive"):
        sampler.speed_report({"diffusers": 1.0, "algorithm2": 0.0, "fused": 1.0}, 0.01, 16, 10)


def test_sanity_flags_images_far_outside_the_model_range():
    ok = sampler.sample_sanity(np.linspace(-1, 1, 100).reshape(1, 1, 10, 10))
    assert ok["plausible"] and ok["fraction_in_range"] == 1.0 and ok["finite"]
    bad = sampler.sample_sanity(np.full((1, 1, 2, 2), 50.0))
    assert not bad["plausible"] and bad["fraction_in_range"] == 0.0


def test_main_writes_the_report_and_chart(tiny_models, tmp_path, capsys):
    pytest.importorskip("diffusers", reason="diffusers is the optional [bench] extra: pip install -e '.[bench]'")
    out = tmp_path / "sampler.json"
    torch.set_num_threads(2)  # the module fixture restores its own setting afterwards
    argv = ["--models", str(tiny_models), "--model", "ddpm-tiny", "--batch", "2", "--steps", "3"]
    assert sampler.main([*argv, "--threads", "1", "--json", str(out)]) == 0  # one thread: fast on a busy machine
    assert torch.get_num_threads() == 2  # the benchmark restores the process's torch threads
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.sampler --models ")
    assert report["settings"]["batch"] == 2 and report["settings"]["steps"] == 3 and report["settings"]["threads"] == 1
    assert set(report["images_per_second"]) == set(sampler.LOOPS)
    assert report["speedup_vs_diffusers"] > 0 and report["speedup_vs_algorithm2"] > 0 and report["loop_overhead"] > 0
    assert len(report["engine_step_seconds_all"]) == 50
    assert report["versions"]["diffusers"] and report["machine"]["cpu_count"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "images/s" in capsys.readouterr().out


def test_without_diffusers_the_error_says_how_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bench\]'"):
        sampler.require_diffusers()
