"""The cuda backend on a real GPU: CUDA graphs per bucket, device slot state, parity with ONNX Runtime.

Skipped, with the reason, where torch sees no CUDA device (the same code runs on the CPU in
tests/integration/test_device_engine.py; benchmarks/gpu/suite.sh measures it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genserve.manifest import WEIGHTS_DIR, Manifest
from genserve.serving.config import Backend, EngineOptions
from genserve.serving.domain import GenerateRequest
from genserve.serving.runner import ModelRunner

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the cuda backend needs one"),
]

MODELS = Path(__file__).resolve().parents[2] / "models"


def within_one_level(a: np.ndarray, b: np.ndarray) -> bool:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return diff.max() <= 1 and (diff == 0).mean() >= 0.999


@pytest.mark.parametrize("name", ["dcgan-mnist", "ddpm-mnist"])
def test_graph_replay_equals_eager_and_onnx_runtime(name):
    folder = MODELS / name
    manifest = Manifest.load(folder)
    graphs = ModelRunner(folder, Backend.CUDA).engine
    eager = ModelRunner(folder, Backend.CUDA, options=EngineOptions(cuda_graphs=False)).engine
    ort = ModelRunner(folder).engine
    assert graphs.cuda_graphs and graphs.buckets[-1] == manifest.max_batch_size
    out = manifest.signature.output_names[0]
    for batch in (1, 3, 17):
        feeds = manifest.signature.sample_inputs(batch, seed=batch)
        replayed = graphs.run(feeds)[out]
        np.testing.assert_allclose(replayed, eager.run(feeds)[out], atol=1e-5)
        np.testing.assert_allclose(replayed, ort.run(feeds)[out], atol=1e-3)


def test_device_slots_serve_onnx_runtimes_images_and_stay_batch_invariant():
    folder = MODELS / "ddpm-mnist"
    cuda, host = ModelRunner(folder, Backend.CUDA), ModelRunner(folder)
    request = GenerateRequest("ddpm-mnist", 6, seed=3, steps=25)
    served = cuda.generate(request)
    assert within_one_level(served, host.generate(request))
    alone = cuda.generate(GenerateRequest("ddpm-mnist", 1, seed=3, steps=25))
    assert within_one_level(served[:1], alone)


def test_the_step_graph_runs_where_the_weights_are():
    engine = ModelRunner(MODELS / "ddpm-mnist", Backend.CUDA).engine
    state = engine.open_slots(8, 1000)
    assert state.x.is_cuda and state.timesteps.is_cuda
    assert (MODELS / "ddpm-mnist" / WEIGHTS_DIR).is_dir()
