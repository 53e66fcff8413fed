"""OnnxRuntimeEngine: the I/O-binding path gives exactly what ``session.run`` gives.

The graph is built here with ``onnx.helper``: y = x @ w + b and z = relu(y), with a dynamic
batch axis and two outputs, so that batch sizes and the order of outputs both show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from genserve.serving.engines import OnnxRuntimeEngine
from genserve.serving.errors import Unavailable
from genserve.signature import BATCH, Signature, TensorSpec

FEATURES, UNITS = 5, 3
SIGNATURE = Signature(
    inputs=(TensorSpec("x", "float32", (BATCH, FEATURES)),),
    outputs=(TensorSpec("y", "float32", (BATCH, UNITS)), TensorSpec("z", "float32", (BATCH, UNITS))),
)
NO_CUDA = "onnxruntime's CUDA provider is not available here (no onnxruntime-gpu or no GPU)"


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((FEATURES, UNITS)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(UNITS).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        "affine_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", UNITS]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", UNITS]),
        ],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path_factory.mktemp("ort") / "model.onnx"
    save_model(model, str(path))
    return path


def engine(onnx_path: Path, io_binding: bool | None) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(onnx_path, SIGNATURE, max_batch_size=16, intra_op_threads=1, io_binding=io_binding)


def test_io_binding_is_off_by_default_on_the_cpu_provider(onnx_path):
    plain = engine(onnx_path, None)
    if plain.providers[0] == "CUDAExecutionProvider":
        pytest.skip("the CUDA provider is first here; the GPU test covers the default")
    assert plain.io_binding is False


@pytest.mark.parametrize("batch", [1, 7])
def test_io_binding_outputs_equal_session_run_bit_for_bit(onnx_path, batch):
    bound, plain = engine(onnx_path, True), engine(onnx_path, False)
    assert (bound.io_binding, plain.io_binding) == (True, False)
    feeds = SIGNATURE.sample_inputs(batch, seed=batch)
    got, want = bound.run(feeds), plain.run(feeds)
    assert list(got) == list(want) == SIGNATURE.output_names
    for name in SIGNATURE.output_names:
        assert got[name].shape == (batch, UNITS) and got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], want[name])
    assert (got["z"] >= 0).all() and not np.array_equal(got["y"], got["z"]), "outputs in signature order"


def test_io_binding_accepts_a_non_contiguous_input(onnx_path):
    wide = SIGNATURE.sample_inputs(4)["x"].repeat(2, axis=1)  # (4, 2 * FEATURES)
    feeds = {"x": wide[:, ::2]}  # a strided view
    assert not feeds["x"].flags.c_contiguous
    got = engine(onnx_path, True).run(feeds)
    want = engine(onnx_path, False).run({"x": np.ascontiguousarray(feeds["x"])})
    for name in SIGNATURE.output_names:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in onnxruntime.get_available_providers(), reason=NO_CUDA)
def test_cuda_provider_binds_by_default_and_matches_session_run(onnx_path):
    bound, plain = engine(onnx_path, None), engine(onnx_path, False)
    assert bound.providers[0] == "CUDAExecutionProvider"
    assert bound.io_binding is True
    for batch in (1, 16):
        feeds = SIGNATURE.sample_inputs(batch, seed=batch)
        got, want = bound.run(feeds), plain.run(feeds)
        for name in SIGNATURE.output_names:
            np.testing.assert_array_equal(got[name], want[name])


def test_without_onnxruntime_the_engine_is_unavailable_naming_the_packages(onnx_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(Unavailable, match=r"ONNX Runtime is not installed: pip install onnxruntime") as err:
        engine(onnx_path, None)
    assert "onnxruntime-gpu" in str(err.value)
    assert isinstance(err.value.__cause__, ImportError)
