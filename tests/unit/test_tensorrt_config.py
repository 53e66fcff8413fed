"""The TensorRT path's configuration, on CPU: cache keys, profiles, paths, sidecars, feed checks,
and what happens on a machine without TensorRT or a GPU (real behaviour here, not mocks)."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genserve.export import tensorrt as trt_export
from genserve.export.tensorrt import (
    EngineRecord,
    EngineSpec,
    Precision,
    cache_key,
    engine_path,
    read_sidecar,
    sidecar_path,
    timing_cache_path,
    write_sidecar,
)
from genserve.manifest import Manifest
from genserve.serving.config import Precision as ServingPrecision
from genserve.serving.errors import InvalidArgument, Unavailable
from genserve.serving.tensorrt_engine import TensorRTEngine, engine_precision, validate_feeds
from genserve.signature import BATCH, ModelKind, diffusion_step_signature, latent_sampler_signature

IMAGE = (1, 28, 28)
MAX_BATCH = 16
ONNX_SHA = "ab" * 32
TRT = "10.3.0"
GPU = "NVIDIA H100 80GB HBM3"
CC = (9, 0)


def sampler_manifest(max_batch: int = MAX_BATCH) -> Manifest:
    return Manifest(
        name="dcgan-tiny",
        kind=ModelKind.SAMPLER,
        version="1",
        signature=latent_sampler_signature(100, IMAGE),
        image_shape=IMAGE,
        max_batch_size=max_batch,
        latent_dim=100,
    )


def diffusion_manifest() -> Manifest:
    return Manifest(
        name="ddpm-tiny",
        kind=ModelKind.DIFFUSION,
        version="1",
        signature=diffusion_step_signature(IMAGE),
        image_shape=IMAGE,
        max_batch_size=MAX_BATCH,
    )


def key_of(spec: EngineSpec, **changes) -> str:
    args = {"onnx_sha256": ONNX_SHA, "trt_version": TRT, "gpu_name": GPU, "compute_capability": CC} | changes
    return cache_key(spec=spec, **args)


# --- cache key -------------------------------------------------------------------------------


def test_cache_key_is_stable_short_hex_for_equal_inputs():
    a = key_of(EngineSpec.from_manifest(diffusion_manifest()))
    b = key_of(EngineSpec.from_manifest(diffusion_manifest()))
    assert a == b
    assert len(a) == trt_export.KEY_CHARS and int(a, 16) >= 0


@pytest.mark.parametrize(
    "changes",
    [
        {"onnx_sha256": "cd" * 32},
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA A100-SXM4-80GB"},
        {"compute_capability": (8, 0)},
        {"compute_capability": (9, 1)},
    ],
    ids=["onnx-hash", "tensorrt-version", "gpu-name", "compute-capability-major", "compute-capability-minor"],
)
def test_cache_key_changes_with_each_environment_component(changes):
    spec = EngineSpec.from_manifest(diffusion_manifest())
    assert key_of(spec, **changes) != key_of(spec)


@pytest.mark.parametrize("precision", [Precision.TF32, Precision.FP16, Precision.BF16])
def test_cache_key_changes_with_precision(precision):
    manifest = diffusion_manifest()
    assert key_of(EngineSpec.from_manifest(manifest, precision)) != key_of(EngineSpec.from_manifest(manifest))


def test_cache_key_changes_with_every_profile_bound_of_every_input():
    spec = EngineSpec.from_manifest(diffusion_manifest())
    base = key_of(spec)
    seen = {base}
    for i, (name, bounds) in enumerate(spec.profile):
        for which in range(3):  # min, opt, max
            bumped = list(bounds)
            bumped[which] = (bounds[which][0] + 1, *bounds[which][1:])
            profile = list(spec.profile)
            profile[i] = (name, tuple(bumped))
            key = key_of(dataclasses.replace(spec, profile=tuple(profile)))
            assert key not in seen, f"{name} {['min', 'opt', 'max'][which]} bound not covered by the key"
            seen.add(key)


def test_cache_key_changes_with_batch_limits_and_workspace():
    manifest = sampler_manifest()
    base = key_of(EngineSpec.from_manifest(manifest))
    assert key_of(EngineSpec.from_manifest(manifest, max_batch=32)) != base
    assert key_of(EngineSpec.from_manifest(manifest, opt_batch=4)) != base
    assert key_of(EngineSpec.from_manifest(manifest, workspace_bytes=2 << 30)) != base


# --- precision: the serving-wide enum reaches the engine build -------------------------------


@pytest.mark.parametrize("serving", list(ServingPrecision), ids=lambda p: p.value)
def test_each_serving_precision_maps_to_the_engine_precision_of_its_value(serving):
    precision = engine_precision(serving)
    assert isinstance(precision, Precision)
    assert precision.value == serving.value


def test_engine_precisions_map_to_themselves():
    assert [engine_precision(p) for p in Precision] == list(Precision)


def test_every_serving_precision_gets_its_own_engine_and_sidecar(tmp_path):
    manifest = diffusion_manifest()
    keys = {}
    for serving in ServingPrecision:
        spec = EngineSpec.from_manifest(manifest, engine_precision(serving))
        record = EngineRecord(ONNX_SHA, TRT, GPU, CC, spec)
        write_sidecar(engine_path(tmp_path, record.key), record)
        assert read_sidecar(engine_path(tmp_path, record.key)).spec.precision.value == serving.value
        keys[serving] = key_of(spec)
    assert len(set(keys.values())) == len(ServingPrecision), keys


def test_a_precision_tensorrt_lacks_is_unavailable_before_anything_is_built(tmp_path):
    fp8 = enum.Enum("Fp8", {"FP8": "fp8"}).FP8  # a serving precision TensorRT engines do not offer
    with pytest.raises(ValueError, match="no fp8 precision"):
        engine_precision(fp8)
    with pytest.raises(Unavailable, match="dcgan-tiny.*no fp8 precision"):
        TensorRTEngine.for_model(tmp_path, sampler_manifest(), fp8)
    assert not (tmp_path / "engines").exists()


# The builder flags each precision sets, on a stand-in for TensorRT's BuilderFlag and builder
# config (TensorRT itself is not installed where these tests run).
class RecordingConfig:
    def __init__(self) -> None:
        self.flags = {"TF32"}  # TensorRT's default: TF32 on, nothing else

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)


def stand_in_tensorrt(*flags: str) -> SimpleNamespace:
    return SimpleNamespace(__version__="10.3.0", BuilderFlag=SimpleNamespace(**{f: f for f in flags}))


@pytest.mark.parametrize(
    ("precision", "flags"),
    [(Precision.FP32, set()), (Precision.TF32, {"TF32"}), (Precision.FP16, {"TF32", "FP16"})],
    ids=["fp32-strict", "tf32", "fp16"],
)
def test_builder_flags_of_each_precision(precision, flags):
    config = RecordingConfig()
    trt_export._set_precision(stand_in_tensorrt("TF32", "FP16", "BF16"), config, precision)
    assert config.flags == flags


def test_tf32_without_a_tf32_builder_flag_is_a_build_error():
    with pytest.raises(trt_export.EngineBuildError, match="no TF32 builder flag; build fp32"):
        trt_export._set_precision(stand_in_tensorrt("FP16"), RecordingConfig(), Precision.TF32)


# --- profiles --------------------------------------------------------------------------------


def test_profile_comes_from_the_signature_with_batch_one_opt_max_and_fixed_other_dims():
    manifest = diffusion_manifest()
    spec = EngineSpec.from_manifest(manifest, opt_batch=4)
    assert spec.profile_dict() == manifest.signature.profile(MAX_BATCH, 4)
    assert [name for name, _ in spec.profile] == manifest.signature.input_names
    for tensor in manifest.signature.inputs:
        lo, opt, hi = spec.profile_dict()[tensor.name]
        axis = tensor.shape.index(BATCH)
        assert (lo[axis], opt[axis], hi[axis]) == (1, 4, MAX_BATCH)
        fixed = [d for d in tensor.shape if d != BATCH]
        for shape in (lo, opt, hi):
            assert [d for j, d in enumerate(shape) if j != axis] == fixed


def test_default_spec_serves_the_manifest_batch_range_with_the_signatures_opt_batch():
    manifest = sampler_manifest()
    spec = EngineSpec.from_manifest(manifest)
    assert (spec.min_batch, spec.opt_batch, spec.max_batch) == (1, MAX_BATCH // 2, MAX_BATCH)
    assert spec.profile_dict() == manifest.signature.profile(MAX_BATCH)
    assert spec.precision is Precision.FP32


def test_engine_spec_rejects_opt_batch_above_max():
    with pytest.raises(ValueError, match="opt_batch"):
        EngineSpec.from_manifest(sampler_manifest(), opt_batch=MAX_BATCH + 1)


# --- files -----------------------------------------------------------------------------------


def test_engine_sidecar_and_timing_cache_live_under_the_model_folders_engines_dir(tmp_path):
    folder = tmp_path / "models" / "dcgan-tiny"
    path = engine_path(folder, "0123456789abcdef")
    assert path == folder / "engines" / "0123456789abcdef.plan"
    assert sidecar_path(path) == folder / "engines" / "0123456789abcdef.json"
    timing = timing_cache_path(folder, TRT, GPU, CC)
    assert timing.parent == folder / "engines"
    assert timing != timing_cache_path(folder, TRT, GPU, (8, 0)), "timing caches are per GPU"


def test_sidecar_round_trips_and_says_what_the_key_covers(tmp_path):
    spec = EngineSpec.from_manifest(diffusion_manifest(), Precision.FP16)
    record = EngineRecord(ONNX_SHA, TRT, GPU, CC, spec, build_seconds=93.4, built_at="2025-01-01T00:00:00+00:00")
    path = engine_path(tmp_path, record.key)
    write_sidecar(path, record)
    assert read_sidecar(path) == record
    text = json.loads(sidecar_path(path).read_text())
    assert text["key"] == record.key == key_of(spec)
    covers = text["covers"]
    assert (covers["gpu_name"], covers["compute_capability"], covers["tensorrt_version"]) == (GPU, "9.0", TRT)
    assert (covers["precision"], covers["onnx_sha256"]) == ("fp16", ONNX_SHA)
    assert covers["profile"]["x"] == {"min": [1, *IMAGE], "opt": [8, *IMAGE], "max": [16, *IMAGE]}
    assert not list(tmp_path.rglob("*.tmp")), "atomic write left a temporary file"


def test_sidecar_whose_key_is_not_the_digest_of_its_contents_is_rejected(tmp_path):
    record = EngineRecord(ONNX_SHA, TRT, GPU, CC, EngineSpec.from_manifest(sampler_manifest()))
    path = engine_path(tmp_path, record.key)
    write_sidecar(path, record)
    edited = json.loads(sidecar_path(path).read_text())
    edited["covers"]["gpu_name"] = "NVIDIA L4"  # e.g. copied between machines and hand-edited
    sidecar_path(path).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="not the digest"):
        read_sidecar(path)


# --- feed validation (the checks TensorRTEngine.run applies before touching the GPU) ----------


def test_valid_feeds_give_their_batch_size():
    signature = diffusion_step_signature(IMAGE)
    assert validate_feeds(signature, signature.sample_inputs(7), MAX_BATCH) == 7


def test_batch_over_the_engine_limit_is_invalid_argument():
    signature = latent_sampler_signature(100, IMAGE)
    with pytest.raises(InvalidArgument, match=r"batch size 17 outside \[1, 16\]"):
        validate_feeds(signature, signature.sample_inputs(MAX_BATCH + 1), MAX_BATCH)


def test_empty_batch_is_invalid_argument():
    signature = latent_sampler_signature(100, IMAGE)
    with pytest.raises(InvalidArgument, match="batch size 0"):
        validate_feeds(signature, {"z": np.zeros((0, 100), np.float32)}, MAX_BATCH)


def test_wrong_dtype_and_wrong_shape_are_reported_together():
    signature = diffusion_step_signature(IMAGE)
    feeds = signature.sample_inputs(2)
    feeds["t"] = feeds["t"].astype(np.int32)
    feeds["x"] = np.zeros((2, 1, 32, 32), np.float32)
    with pytest.raises(InvalidArgument) as err:
        validate_feeds(signature, feeds, MAX_BATCH)
    assert "t: dtype int32, expected int64" in str(err.value)
    assert "x: shape (2, 1, 32, 32), expected (batch, 1, 28, 28)" in str(err.value)


def test_missing_and_unknown_inputs_are_invalid_argument():
    signature = diffusion_step_signature(IMAGE)
    feeds = signature.sample_inputs(2)
    del feeds["noise"]
    feeds["label"] = np.zeros(2, np.int64)
    with pytest.raises(InvalidArgument, match=r"missing \['noise'\], unknown \['label'\]"):
        validate_feeds(signature, feeds, MAX_BATCH)


def test_inputs_that_disagree_on_batch_size_are_invalid_argument():
    signature = diffusion_step_signature(IMAGE)
    feeds = signature.sample_inputs(3)
    feeds["noise"] = signature.sample_inputs(2)["noise"]
    with pytest.raises(InvalidArgument, match="disagree on the batch size"):
        validate_feeds(signature, feeds, MAX_BATCH)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(min_value=0, max_value=3 * MAX_BATCH), latent=st.integers(min_value=1, max_value=8))
def test_feed_validation_accepts_exactly_batches_one_to_max(batch, latent):
    signature = latent_sampler_signature(latent, IMAGE)
    feeds = {"z": np.zeros((batch, latent), np.float32)}
    if 1 <= batch <= MAX_BATCH:
        assert validate_feeds(signature, feeds, MAX_BATCH) == batch
    else:
        with pytest.raises(InvalidArgument):
            validate_feeds(signature, feeds, MAX_BATCH)


# --- this machine: no TensorRT and/or no GPU -------------------------------------------------

TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()


@pytest.mark.skipif(TRT_INSTALLED and HAS_CUDA, reason="TensorRT and a CUDA device are both present here")
def test_for_model_raises_unavailable_naming_every_missing_piece(tmp_path):
    with pytest.raises(Unavailable) as err:
        TensorRTEngine.for_model(tmp_path, sampler_manifest())
    message = str(err.value)
    assert "dcgan-tiny" in message
    if not TRT_INSTALLED:
        assert "TensorRT is not installed" in message
    if not HAS_CUDA:
        assert "no CUDA device" in message
    assert not (tmp_path / "engines").exists(), "nothing is written when TensorRT cannot run"


@pytest.mark.skipif(TRT_INSTALLED and HAS_CUDA, reason="TensorRT and a CUDA device are both present here")
@pytest.mark.parametrize("precision", [ServingPrecision.TF32, Precision.TF32], ids=["serving-enum", "engine-enum"])
def test_for_model_takes_either_precision_enum_and_says_what_is_missing(tmp_path, precision):
    with pytest.raises(Unavailable, match="TensorRT backend unavailable for model dcgan-tiny"):
        TensorRTEngine.for_model(tmp_path, sampler_manifest(), precision)


@pytest.mark.skipif(TRT_INSTALLED and HAS_CUDA, reason="TensorRT and a CUDA device are both present here")
def test_build_engine_without_tensorrt_or_cuda_raises_unavailable_error(tmp_path):
    with pytest.raises(trt_export.TensorRTUnavailableError):
        trt_export.build_engine(tmp_path, EngineSpec.from_manifest(sampler_manifest()))


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present here")
def test_current_device_without_cuda_says_why():
    with pytest.raises(trt_export.TensorRTUnavailableError, match="no CUDA device"):
        trt_export.current_device()


def test_tensorrt_modules_import_without_importing_tensorrt_or_torch():
    code = (
        "import sys, genserve.export.tensorrt, genserve.serving.tensorrt_engine; "
        "print(sorted(m for m in ('tensorrt', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert out.stdout.strip() == "[]"
