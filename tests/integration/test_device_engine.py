"""The cuda backend's logic on ``device=cpu``: the torch engine with batch buckets (padding) and its
device-resident slot state (``TorchSlots``: on-device noise, per-slot schedules, joins, moves),
against ONNX Runtime with host slots, through the request-level runner and the step scheduler.

An image served by the device state must equal ONNX Runtime's within one grey level on at least
99.9% of pixels (two runtimes' float32 kernels round differently in the last bits), and must not
depend on the batch it ran in (the same tolerance, as in test_step_batching). The GPU runs the
same code with CUDA graphs (benchmarks/gpu/suite.sh; tests/gpu)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import numpy as np
import pytest

from genserve import images
from genserve.manifest import WEIGHTS_DIR, Manifest
from genserve.schedule import Sampler
from genserve.serving.config import Backend, EngineOptions, ModelSettings, Precision
from genserve.serving.diffusion import DiffusionScheduler
from genserve.serving.domain import GenerateRequest
from genserve.serving.runner import ModelRunner
from genserve.serving.slots import HostSlots
from genserve.serving.torch_engine import TorchEngine, TorchSlots, bucket_for, bucket_sizes

torch = pytest.importorskip("torch")

DDPM, DDPM_COND, DCGAN = "ddpm-tiny", "ddpm-cond-tiny", "dcgan-tiny"
BUNDLED = Path(__file__).resolve().parents[2] / "models"


def assert_within_one_level(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1, f"images differ by up to {diff.max()} grey levels"
    assert (diff == 0).mean() >= 0.999, f"only {(diff == 0).mean():.4%} of pixels identical"


def device_engine(folder: Path, **kw) -> TorchEngine:
    """The cuda backend's engine on the CPU, padding every batch to its bucket as the GPU does."""
    manifest = Manifest.load(folder)
    return TorchEngine(
        folder / WEIGHTS_DIR,
        manifest.signature,
        manifest.max_batch_size,
        manifest.source.get("view"),
        device="cpu",
        pad_to_buckets=True,
        **kw,
    )


@pytest.fixture(scope="module")
def host(tiny_models: Path) -> dict[str, ModelRunner]:
    return {name: ModelRunner(tiny_models / name) for name in (DDPM, DDPM_COND, DCGAN)}


@pytest.fixture(scope="module")
def device(tiny_models: Path) -> dict[str, ModelRunner]:
    return {
        name: ModelRunner(tiny_models / name, engine=device_engine(tiny_models / name))
        for name in (DDPM, DDPM_COND, DCGAN)
    }


def test_buckets_are_powers_of_two_up_to_the_limit_and_a_batch_takes_the_smallest_that_holds_it():
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes(48) == (1, 2, 4, 8, 16, 32, 48)
    assert bucket_sizes(1) == (1,)
    assert [bucket_for(n, bucket_sizes(48)) for n in (1, 2, 3, 5, 33, 48)] == [1, 2, 4, 8, 48, 48]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_for(49, bucket_sizes(48))


def test_device_slots_live_in_torch_tensors_and_host_slots_in_numpy(host, device):
    assert isinstance(device[DDPM].open_slots(capacity=8), TorchSlots)
    assert isinstance(host[DDPM].open_slots(capacity=8), HostSlots)
    state = device[DDPM].open_slots(capacity=8)
    assert state.buckets == (1, 2, 4, 8) and state.x.device.type == "cpu"


@pytest.mark.parametrize("sampler,steps", [(Sampler.DDIM, 6), (Sampler.DDPM, 5)])
def test_request_level_images_equal_onnx_runtimes_within_one_grey_level(host, device, sampler, steps):
    request = GenerateRequest(DDPM, 5, seed=11, steps=steps, sampler=sampler)  # 5 rows: padded to bucket 8
    assert_within_one_level(device[DDPM].generate(request), host[DDPM].generate(request))


def test_a_guided_conditional_model_keeps_each_slots_label_and_scale_on_the_device(host, device):
    request = GenerateRequest(DDPM_COND, 3, seed=4, steps=5, label=7, guidance=2.5)
    assert_within_one_level(device[DDPM_COND].generate(request), host[DDPM_COND].generate(request))
    unguided = GenerateRequest(DDPM_COND, 3, seed=4, steps=5, label=7, guidance=0.0)
    assert not np.array_equal(device[DDPM_COND].generate(request), device[DDPM_COND].generate(unguided))


def test_the_step_scheduler_on_device_slots_gives_each_request_its_own_images(host, device):
    """Requests of different step counts share the running batch; slots join, finish and are
    swap-removed on the device state, and batches of 1 to 8 rows run padded to their buckets."""
    requests = [
        GenerateRequest(DDPM, 3, seed=1, steps=4),
        GenerateRequest(DDPM, 2, seed=2, steps=9),
        GenerateRequest(DDPM, 4, seed=3, steps=6, sampler=Sampler.DDPM),
    ]

    async def scenario():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            scheduler = DiffusionScheduler(device[DDPM], ModelSettings(max_batch_size=8), pool)
            try:
                first = asyncio.ensure_future(scheduler.submit(requests[0]))
                await asyncio.sleep(0)
                rest = [asyncio.ensure_future(scheduler.submit(r)) for r in requests[1:]]
                return await asyncio.gather(first, *rest)
            finally:
                await scheduler.close()

    served = asyncio.run(scenario())
    for request, images_ in zip(requests, served, strict=True):
        assert_within_one_level(images_, host[DDPM].generate(request))
        assert_within_one_level(images_, device[DDPM].generate(request))  # alone, in the runner's state


def test_moving_a_slot_carries_its_whole_state(device):
    state = device[DDPM].open_slots(capacity=4)
    plan = device[DDPM].validate(GenerateRequest(DDPM, 1, seed=9, steps=5))
    seeds, index = np.array([9, 9]), np.array([0, 1])
    state.join(0, seeds, index, plan.timesteps, plan.coefs, {})
    state.step(2, 2)
    state.move(1, 3)  # image 1 continues in row 3, image 0 stays in row 0
    state.move(3, 1)
    state.step(2, 3)
    reference = device[DDPM].open_slots(capacity=4)
    reference.join(0, seeds, index, plan.timesteps, plan.coefs, {})
    reference.step(2, 5)
    np.testing.assert_array_equal(state.images([0, 1]), reference.images([0, 1]))


def test_one_pass_models_match_onnx_runtime_at_padded_batches_and_convert_to_uint8_on_the_device(tiny_models):
    folder = tiny_models / DCGAN
    manifest = Manifest.load(folder)
    engine = device_engine(folder)
    ort = ModelRunner(folder).engine
    for batch in (1, 3, 7):  # buckets 1, 4, 8
        feeds = manifest.signature.sample_inputs(batch, seed=batch)
        got, want = engine.run(feeds), ort.run(feeds)
        name = manifest.signature.output_names[0]
        np.testing.assert_allclose(got[name], want[name], atol=1e-4)
        np.testing.assert_array_equal(engine.run_uint8(feeds), images.to_uint8(got[name]))
    # a row's output does not depend on the padding or the other rows of its bucket
    feeds = manifest.signature.sample_inputs(3, seed=5)
    alone = engine.run({k: v[1:2] for k, v in feeds.items()})
    np.testing.assert_allclose(engine.run(feeds)[name][1:2], alone[name], atol=1e-5)


def test_the_batcher_path_of_a_device_engine_serves_the_same_images(host, device):
    request = GenerateRequest(DCGAN, 5, seed=3)
    parts = [(request, 0, 5)]
    np.testing.assert_array_equal(
        device[DCGAN].run_images(parts), images.to_uint8(device[DCGAN]._run_once(device[DCGAN].engine, parts))
    )
    assert_within_one_level(device[DCGAN].run_images(parts), host[DCGAN].run_images(parts))


def test_bf16_autocast_changes_the_arithmetic_but_not_the_step():
    folder = BUNDLED / "ddpm-mnist"  # trained weights: the tiny UNet's zero-initialised output layer hides autocast
    feeds = Manifest.load(folder).signature.sample_inputs(4, seed=6)
    fp32 = device_engine(folder).run(feeds)["x_prev"]
    bf16 = device_engine(folder, precision=Precision.BF16).run(feeds)["x_prev"]
    assert bf16.dtype == np.float32  # outputs stay as the signature says
    assert not np.array_equal(fp32, bf16)  # autocast did run the convolutions in bfloat16
    assert np.abs(fp32 - bf16).mean() < 0.02 * np.abs(fp32).mean() + 1e-3


def test_the_cuda_backend_says_it_needs_a_cuda_device(tiny_models):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the cuda backend loads here (tests/gpu cover it)")
    from genserve.serving.errors import Unavailable

    with pytest.raises(Unavailable, match="needs a CUDA device"):
        ModelRunner(tiny_models / DDPM, Backend.CUDA)
    # on an explicit CPU device it runs, without graphs or padding
    runner = ModelRunner(tiny_models / DDPM, Backend.CUDA, options=EngineOptions(device="cpu"))
    assert not runner.engine.cuda_graphs and runner.engine.buckets is None
