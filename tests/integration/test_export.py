"""ONNX export: dynamic batch axis, parity with PyTorch, and a model folder serving can trust."""

import json

import numpy as np
import onnx
import pytest

from genserve import manifest as mf
from genserve.export.onnx_export import PARITY_ATOL, check_parity
from genserve.nets import load_checkpoint
from genserve.nets.graphs import servable_module

TINY = ["ddpm-tiny", "dcgan-tiny"]


@pytest.mark.parametrize("name", TINY)
def test_exported_graph_matches_pytorch_at_batch_1_and_7(tiny_models, name):
    folder = tiny_models / name
    manifest = mf.Manifest.load(folder)
    net, meta = load_checkpoint(folder / mf.WEIGHTS_DIR)
    module, kind = servable_module(net, meta["family"])
    assert kind is manifest.kind
    errors = check_parity(module, folder / mf.ONNX_FILE, manifest.signature, batches=(1, 7))
    assert set(errors) == {1, 7}
    assert max(errors.values()) <= PARITY_ATOL, errors
    assert {int(k) for k in manifest.source["parity_max_abs_error"]} == {1, 7}


@pytest.mark.parametrize("name", TINY)
def test_every_graph_input_and_output_has_a_dynamic_batch_axis(tiny_models, name):
    graph = onnx.load(str(tiny_models / name / mf.ONNX_FILE)).graph
    manifest = mf.Manifest.load(tiny_models / name)
    assert [i.name for i in graph.input] == manifest.signature.input_names
    assert [o.name for o in graph.output] == manifest.signature.output_names
    for value in list(graph.input) + list(graph.output):
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.HasField("dim_value"), f"{value.name} has a fixed batch size"


def test_diffusion_export_is_one_fused_step_graph(tiny_models):
    manifest = mf.Manifest.load(tiny_models / "ddpm-tiny")
    assert manifest.signature.input_names == ["x", "t", "coef", "noise"]
    assert manifest.signature.output_names == ["x_prev"]
    assert manifest.diffusion.num_timesteps == 1000


def test_manifest_lists_file_hashes_and_detects_tampering(tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_models / "dcgan-tiny", folder)
    manifest = mf.Manifest.load(folder)
    assert manifest.files[mf.ONNX_FILE] == mf.sha256(folder / mf.ONNX_FILE)
    with open(folder / mf.ONNX_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(mf.ManifestError, match="sha256 of model.onnx"):
        mf.Manifest.load(folder)


def test_invalid_manifest_reports_every_problem(tmp_path):
    (tmp_path / mf.MANIFEST_FILE).write_text(json.dumps({"format_version": 1, "kind": "painting", "max_batch_size": 0}))
    with pytest.raises(mf.ManifestError) as info:
        mf.Manifest.load(tmp_path)
    problems = " ".join(info.value.problems)
    for expected in ("'name'", "'version'", "kind must be one of", "max_batch_size must be", "model.onnx not found"):
        assert expected in problems


def test_a_guided_graphs_manifest_states_its_default_scale_and_older_folders_still_load(tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_models / "ddpm-cond-tiny", folder)
    path = folder / mf.MANIFEST_FILE
    d = json.loads(path.read_text())
    assert d["default_guidance"] == 1.0 and "default_guidance" not in d["diffusion"]
    d["diffusion"]["default_guidance"] = d.pop("default_guidance")  # where folders exported before kept it
    path.write_text(json.dumps(d))
    assert mf.Manifest.load(folder).default_guidance == 1.0
    del d["diffusion"]["default_guidance"]
    path.write_text(json.dumps(d))
    with pytest.raises(mf.ManifestError, match="'default_guidance' is set exactly when the graph takes a 'guidance'"):
        mf.Manifest.load(folder)
    d["diffusion"] = "linear"
    path.write_text(json.dumps(d))
    with pytest.raises(mf.ManifestError, match="'diffusion' must be an object"):
        mf.Manifest.load(folder)


def test_sample_inputs_follow_the_signature(tiny_models):
    sig = mf.Manifest.load(tiny_models / "ddpm-tiny").signature
    feeds = sig.sample_inputs(batch=3)
    for spec in sig.inputs:
        assert feeds[spec.name].shape == spec.concrete(3)
        assert feeds[spec.name].dtype == np.dtype(spec.dtype)


def test_half_storage_halves_float16_values_and_keeps_derived_constants_exact(tmp_path):
    """A rounded weight is stored as float16 behind a Cast; a constant the exporter derived from
    one (here exp of a float16 value, as a folded log-scale is) is not a float16 value and stays
    float32, so the stored graph computes exactly what the float32 one did."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from genserve.export.onnx_export import store_initializers_in_half

    rng = np.random.default_rng(0)
    rounded = rng.standard_normal(512).astype(np.float16).astype(np.float32)
    derived = np.exp(rounded)  # float32, not float16-exact
    assert not np.array_equal(derived.astype(np.float16).astype(np.float32), derived)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Mul", ["xw", "e"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512])],
        [numpy_helper.from_array(rounded, "w"), numpy_helper.from_array(derived, "e")],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal(512).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    store_initializers_in_half(path)
    types = {init.name: init.data_type for init in onnx.load(str(path)).graph.initializer}
    assert types == {"w__fp16": TensorProto.FLOAT16, "e": TensorProto.FLOAT}
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, before)
