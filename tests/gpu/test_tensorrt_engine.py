"""TensorRT engines on a real GPU: parity with ONNX Runtime, the engine cache, batch limits.

Every test here is skipped, with the reason, where TensorRT or a CUDA device is missing.
Engines are built from a tiny random-init DCGAN generator exported to a real model folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genserve.export import tensorrt as trt_export
from genserve.export.tensorrt import EngineBuildError, EngineSpec, Precision, build_engine, read_sidecar
from genserve.manifest import Manifest
from genserve.serving.errors import InvalidArgument
from genserve.serving.tensorrt_engine import TensorRTEngine

pytestmark = pytest.mark.gpu

MAX_BATCH = 16
FP32_ATOL = 1e-3
FP16_ATOL = 5e-2  # outputs are tanh in [-1, 1]; fp16 keeps ~3 decimal digits per op


@pytest.fixture(scope="module")
def trt():
    trt = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (NVIDIA's tensorrt>=10 wheel, pip install 'genserve[gpu]')"
    )
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return trt


@pytest.fixture(scope="module")
def model_folder(trt, tmp_path_factory) -> Path:
    import torch

    from genserve.export.onnx_export import export_model_folder
    from genserve.nets import save_checkpoint
    from genserve.nets.dcgan import DCGANConfig, Generator

    tmp = tmp_path_factory.mktemp("tensorrt")
    torch.manual_seed(0)
    g = Generator(DCGANConfig(gen_features=16))
    save_checkpoint(tmp / "ck", "dcgan_generator", g.eval(), g.config)
    export_model_folder(tmp / "ck", tmp / "models" / "dcgan-tiny", "dcgan-tiny", max_batch_size=MAX_BATCH)
    return tmp / "models" / "dcgan-tiny"


@pytest.fixture(scope="module")
def engine(model_folder):
    engine = TensorRTEngine.for_model(model_folder, Manifest.load(model_folder))
    yield engine
    engine.close()


def onnxruntime_outputs(model_folder: Path, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


@pytest.mark.parametrize("batch", [1, 7])
def test_fp32_engine_matches_onnxruntime(engine, model_folder, batch):
    feeds = engine.signature.sample_inputs(batch, seed=batch)
    got = engine.run(feeds)
    want = onnxruntime_outputs(model_folder, feeds, engine.signature.output_names)
    for name, ref in zip(engine.signature.output_names, want, strict=True):
        assert got[name].shape == ref.shape and got[name].dtype == ref.dtype
        err = float(np.abs(got[name] - ref).max())
        assert err <= FP32_ATOL, f"{name} at batch {batch}: max abs error {err:.2e}"


def test_second_build_reuses_the_cached_engine_without_rebuilding(engine, model_folder, monkeypatch):
    path = engine.engine_path
    before = path.stat().st_mtime_ns

    def rebuild(*args, **kwargs):
        raise AssertionError("rebuilt an engine whose key is already cached")

    monkeypatch.setattr(trt_export, "_build_serialized", rebuild)
    assert build_engine(model_folder, EngineSpec.from_manifest(Manifest.load(model_folder))) == path
    assert path.stat().st_mtime_ns == before
    assert [p.name for p in (model_folder / "engines").glob("*.plan")] == [path.name]


def test_cached_engine_sidecar_describes_this_gpu_and_tensorrt(engine, trt):
    import torch

    record = read_sidecar(engine.engine_path)
    assert record.key == engine.engine_path.stem
    assert record.gpu_name == torch.cuda.get_device_name()
    assert record.compute_capability == torch.cuda.get_device_capability()
    assert record.tensorrt_version == trt.__version__
    assert record.build_seconds is not None and record.build_seconds > 0


def test_batch_over_the_max_is_rejected(engine):
    with pytest.raises(InvalidArgument, match=rf"batch size {MAX_BATCH + 1} outside \[1, {MAX_BATCH}\]"):
        engine.run(engine.signature.sample_inputs(MAX_BATCH + 1))


def test_every_batch_size_runs_on_the_same_preallocated_buffers(engine):
    addresses = {name: t.data_ptr() for name, t in engine._device_buffers.items()}
    for batch in (1, 2, MAX_BATCH - 1, MAX_BATCH):
        out = engine.run(engine.signature.sample_inputs(batch))
        for spec in engine.signature.outputs:
            assert out[spec.name].shape == spec.concrete(batch)
    assert {name: t.data_ptr() for name, t in engine._device_buffers.items()} == addresses


def test_results_are_not_overwritten_by_the_next_call(engine):
    first = engine.run(engine.signature.sample_inputs(3, seed=1))
    kept = {name: a.copy() for name, a in first.items()}
    engine.run(engine.signature.sample_inputs(3, seed=2))
    for name, a in first.items():
        np.testing.assert_array_equal(a, kept[name])


def test_fp16_engine_is_a_separate_cache_entry_close_to_onnxruntime(engine, model_folder):
    fp16 = TensorRTEngine.for_model(model_folder, Manifest.load(model_folder), Precision.FP16)
    try:
        assert fp16.engine_path != engine.engine_path
        feeds = fp16.signature.sample_inputs(7, seed=7)
        got = fp16.run(feeds)
        want = onnxruntime_outputs(model_folder, feeds, fp16.signature.output_names)
        for name, ref in zip(fp16.signature.output_names, want, strict=True):
            assert float(np.abs(got[name] - ref).max()) <= FP16_ATOL
    finally:
        fp16.close()


def test_unparsable_onnx_fails_with_every_parser_error(trt, tmp_path, model_folder):
    (tmp_path / "model.onnx").write_bytes(b"this is not an ONNX protobuf")
    spec = EngineSpec.from_manifest(Manifest.load(model_folder))
    with pytest.raises(EngineBuildError, match=r"could not parse .*model\.onnx: \d+ error\(s\)"):
        build_engine(tmp_path, spec)
    assert not list((tmp_path / "engines").glob("*.plan"))
