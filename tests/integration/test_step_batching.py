"""Step-level diffusion batching: the scheduler in-process on ``ddpm-tiny`` (ONNX Runtime), and
the real server under concurrent load, with streaming.

Batch invariance tolerance: an image's arithmetic is the same whatever shares its batch (its
own x, timestep, coefficients and counter-based noise; GroupNorm normalises per image), but
ONNX Runtime's kernels may block and vectorise a batch of 7 differently from a batch of 1, so
float32 sums may round differently in the last bits. Over a few steps that stays far below
half a grey level, so the uint8 images must be equal except for pixels that sit on a rounding
boundary: at most one level apart, and at least 99.9% of pixels identical."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from genserve.client import GenserveClient
from genserve.schedule import Sampler
from genserve.serving.config import ModelSettings
from genserve.serving.diffusion import DiffusionScheduler
from genserve.serving.domain import GenerateRequest
from genserve.serving.errors import DeadlineExceeded
from genserve.serving.runner import ModelRunner

DDPM = "ddpm-tiny"
WAIT = 120.0


def assert_batch_invariant(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1, f"images differ by up to {diff.max()} grey levels"
    assert (diff == 0).mean() >= 0.999, f"only {(diff == 0).mean():.4%} of pixels identical"


@pytest.fixture(scope="module")
def runner(tiny_models: Path) -> ModelRunner:
    return ModelRunner(tiny_models / DDPM)


@pytest.fixture
def executor():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        yield pool


def req(n: int, seed: int, steps: int, **kw) -> GenerateRequest:
    return GenerateRequest(DDPM, n, seed=seed, steps=steps, **kw)


def test_a_request_alone_gives_exactly_the_reference_loops_images(runner, executor):
    async def scenario():
        scheduler = DiffusionScheduler(runner, ModelSettings(), executor)
        try:
            return await scheduler.submit(req(3, seed=5, steps=7))
        finally:
            await scheduler.close()

    np.testing.assert_array_equal(asyncio.run(scenario()), runner.generate(req(3, seed=5, steps=7)))


def test_requests_with_different_step_counts_share_steps_and_each_finishes_at_its_own(runner, executor):
    async def scenario():
        scheduler = DiffusionScheduler(runner, ModelSettings(), executor)
        finished: list[str] = []

        async def run(name: str, request: GenerateRequest) -> np.ndarray:
            out = await scheduler.submit(request)
            finished.append(name)
            return out

        long = asyncio.create_task(run("long", req(2, seed=1, steps=40)))
        await asyncio.sleep(0.05)  # `long` is sampling; the others join it at a step boundary
        results = await asyncio.gather(
            long, run("short", req(1, seed=2, steps=3)), run("ddpm", req(2, seed=3, steps=5, sampler=Sampler.DDPM))
        )
        await scheduler.close()
        return finished, results

    finished, (long, short, ddpm) = asyncio.run(scenario())
    assert finished[-1] == "long"
    assert_batch_invariant(long, runner.generate(req(2, seed=1, steps=40)))
    assert_batch_invariant(short, runner.generate(req(1, seed=2, steps=3)))
    assert_batch_invariant(ddpm, runner.generate(req(2, seed=3, steps=5, sampler=Sampler.DDPM)))


def test_a_request_larger_than_the_free_slots_runs_in_parts_and_is_unchanged(runner, executor):
    async def scenario():
        scheduler = DiffusionScheduler(runner, ModelSettings(max_batch_size=2), executor)
        out = await scheduler.submit(req(5, seed=9, steps=4))
        await scheduler.close()
        return out

    assert_batch_invariant(asyncio.run(scenario()), runner.generate(req(5, seed=9, steps=4)))


def test_cancelling_a_running_request_frees_its_slots_at_the_next_step(runner, executor):
    async def scenario():
        scheduler = DiffusionScheduler(runner, ModelSettings(max_batch_size=2), executor)
        task = asyncio.create_task(scheduler.submit(req(2, seed=1, steps=1000)))
        while scheduler.active_slots < 2:
            await asyncio.sleep(0.005)
        task.cancel()
        cancelled_at = time.monotonic()
        while scheduler.active_slots:
            await asyncio.sleep(0.001)
        freed_after = time.monotonic() - cancelled_at
        follow = await scheduler.submit(req(1, seed=2, steps=2))  # the slots are usable again
        await scheduler.close()
        return freed_after, follow

    freed_after, follow = asyncio.run(scenario())
    assert freed_after < 5.0
    assert follow.shape == (1, 28, 28, 1)


def test_a_running_request_past_its_deadline_fails_and_frees_its_slots(runner, executor):
    async def scenario():
        scheduler = DiffusionScheduler(runner, ModelSettings(), executor)
        with pytest.raises(DeadlineExceeded, match="while sampling"):
            await scheduler.submit(req(1, seed=1, steps=1000, timeout=0.2))
        slots = scheduler.active_slots
        await scheduler.close()
        return slots

    assert asyncio.run(scenario()) == 0


def test_request_level_batching_makes_a_newcomer_wait_for_the_running_batch(runner, executor):
    async def scenario(join: str) -> list[str]:
        scheduler = DiffusionScheduler(runner, ModelSettings(diffusion_batching=join), executor)
        finished: list[str] = []

        async def run(name: str, request: GenerateRequest) -> None:
            await scheduler.submit(request)
            finished.append(name)

        long = asyncio.create_task(run("long", req(1, seed=1, steps=60)))
        while scheduler.active_slots == 0:
            await asyncio.sleep(0.001)
        await asyncio.gather(long, run("short", req(1, seed=2, steps=2)))
        await scheduler.close()
        return finished

    assert asyncio.run(scenario("step")) == ["short", "long"]
    assert asyncio.run(scenario("request")) == ["long", "short"]


# --- the real server ---------------------------------------------------------------------


def test_images_do_not_depend_on_what_shared_their_batch_under_concurrent_load(server):
    target = dict(model=DDPM, num_images=3, seed=11, steps=20)
    with GenserveClient(server.target, timeout=WAIT) as client:
        alone = client.generate(**target)
    others = [dict(model=DDPM, num_images=n, seed=100 + i, steps=s) for i, (n, s) in enumerate([(4, 30), (1, 5)] * 3)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool, GenserveClient(server.target, timeout=WAIT) as client:
        load = [pool.submit(client.generate, **o) for o in others[:3]]
        time.sleep(0.05)
        under_load = pool.submit(client.generate, **target)
        load += [pool.submit(client.generate, **o) for o in others[3:]]
        for job in load:
            job.result()
        assert_batch_invariant(under_load.result(), alone)
    batches = re.search(rf'genserve_batch_size_sum{{model="{DDPM}"}} (\S+)', server.scrape_metrics())
    count = re.search(rf'genserve_batch_size_count{{model="{DDPM}"}} (\S+)', server.scrape_metrics())
    assert float(batches.group(1)) / float(count.group(1)) > 1.0, "no step ran more than one slot"


def test_the_progress_stream_reports_each_step_with_previews_then_the_images(server):
    with GenserveClient(server.target, timeout=WAIT) as client:
        events = list(client.generate_stream(DDPM, 2, seed=4, steps=12, preview_every=4))
        expected = client.generate(DDPM, 2, seed=4, steps=12)
    steps = [e.step for e in events[:-1]]
    assert steps == sorted(steps) and steps[-1] == 11 and all(e.total == 12 for e in events)
    with_previews = [e for e in events if e.previews]
    assert [e.step for e in with_previews] == [4, 8]
    assert with_previews[0].previews[0].shape == (14, 14, 1)
    np.testing.assert_array_equal(events[-1].images, expected)


def test_the_stream_of_a_one_pass_model_is_just_its_images(server):
    with GenserveClient(server.target, timeout=WAIT) as client:
        events = list(client.generate_stream("dcgan-tiny", 3, seed=1))
        expected = client.generate("dcgan-tiny", 3, seed=1)
    assert len(events) == 1
    np.testing.assert_array_equal(events[0].images, expected)


def test_cancelling_a_stream_stops_the_work_and_frees_its_slots(start_server):
    server = start_server(metrics=True).wait_until_serving()
    with GenserveClient(server.target, timeout=WAIT) as client:
        stream = client.generate_stream(DDPM, 2, seed=1, steps=1000)
        for event in stream:
            if event.step >= 2:
                break
        stream.close()  # cancels the call
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f'genserve_pending_requests{{model="{DDPM}"}} 0.0' in server.scrape_metrics():
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the cancelled stream's request is still pending")

    def units() -> float:
        return float(re.search(rf'genserve_computed_units_total{{model="{DDPM}"}} (\S+)', server.scrape_metrics())[1])

    # The caller is gone (pending 0) while the step already running may still finish: at most one
    # more step of its 2 slots is counted, then nothing.
    at_cancel = units()
    time.sleep(0.5)
    after_one_step = units()
    time.sleep(0.5)
    assert after_one_step - at_cancel <= 2, "more than the step in flight ran after the cancel"
    assert units() == after_one_step < 2 * 1000, "steps kept running after the cancel"
    assert 'code="CANCELLED"' in server.scrape_metrics()


def test_generate_stream_cli_shows_progress_and_writes_the_images(server, genserve, tmp_path):
    out = tmp_path / "x.npy"
    done = genserve(
        "generate", "--server", server.target, "--model", DDPM, "-n", "2", "--steps", "5", "--stream", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert "5/5" in done.stderr
    assert np.load(out).shape == (2, 28, 28)


def test_a_stream_for_an_unknown_model_is_not_found(server):
    with GenserveClient(server.target, timeout=WAIT) as client, pytest.raises(grpc.RpcError) as err:
        list(client.generate_stream("nope", 1))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
