"""The KServe v2 API (inference.GRPCInferenceService) with Triton's own client, tritonclient.grpc,
against a real server: the same models and images as genserve's own API."""

from __future__ import annotations

import importlib.metadata
import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from genserve.client import GenserveClient
from genserve.signature import ModelKind
from tests.fixtures import CGAN, PIX2PIX, SUPERRES

DDPM, GAN = "ddpm-tiny", "dcgan-tiny"
FEW_STEPS = 3
SERVICE = "inference.GRPCInferenceService"


@pytest.fixture
def kserve(server):
    with triton.InferenceServerClient(server.target) as c:
        yield c


@pytest.fixture
def infos(client: GenserveClient):
    return {info.name: info for info in client.list_models()}


def seed_input(seeds, datatype: str = "INT64", shape=None) -> triton.InferInput:
    """SEED of shape [len(seeds), 1], or of ``shape`` (tritonclient checks data against the shape it sends)."""
    data = np.asarray(list(seeds), dtype=np.int64 if datatype == "INT64" else np.int32)
    data = data.reshape((-1, 1) if shape is None else shape)
    tensor = triton.InferInput("SEED", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def steps_input(steps: list[int]) -> triton.InferInput:
    data = np.asarray(steps, dtype=np.int32).reshape(-1, 1)
    tensor = triton.InferInput("STEPS", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return tensor


def own_images(client: GenserveClient, model: str, seeds, **options) -> np.ndarray:
    """Image 0 of genserve's own Generate(model, 1, seed) for each seed, stacked."""
    return np.concatenate([client.generate(model, 1, seed=int(s), **options) for s in seeds])


def triton_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# --- Health, readiness, metadata ---------------------------------------------------------------


def test_server_and_models_are_live_and_ready(kserve, infos):
    assert kserve.is_server_live()
    assert kserve.is_server_ready()
    assert kserve.is_model_ready(GAN) and kserve.is_model_ready(DDPM)
    assert kserve.is_model_ready(GAN, infos[GAN].version)
    assert not kserve.is_model_ready("no-such-model")
    assert not kserve.is_model_ready(GAN, "no-such-version")


def test_health_reports_the_kserve_service_serving(client: GenserveClient):
    assert client.health(SERVICE) == "SERVING"


def test_server_metadata_names_genserve_and_the_extensions_it_implements(kserve):
    metadata = kserve.get_server_metadata()
    assert metadata.name == "genserve"
    assert metadata.version == importlib.metadata.version("genserve")
    assert sorted(metadata.extensions) == ["model_configuration", "statistics"]


@pytest.mark.parametrize("model", [GAN, DDPM])
def test_model_metadata_describes_the_tensor_contract(kserve, infos, model):
    info = infos[model]
    c, h, w = info.image_shape
    metadata = kserve.get_model_metadata(model)
    assert metadata.name == model
    assert list(metadata.versions) == [info.version]
    assert metadata.platform == "genserve_onnxruntime"
    inputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs]
    expected = [("SEED", "INT64", [-1, 1])]
    if info.kind is ModelKind.DIFFUSION:
        expected.append(("STEPS", "INT32", [-1, 1]))
    assert inputs == expected
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("IMAGE", "UINT8", [-1, h, w, c]),
        ("IMAGE_FP32", "FP32", [-1, h, w, c]),
    ]


def test_model_config_of_the_sampler_reports_tensors_batch_limit_and_batcher(kserve, infos):
    info = infos[GAN]
    c, h, w = info.image_shape
    config = kserve.get_model_config(GAN).config
    assert (config.name, config.platform, config.backend) == (GAN, "genserve_onnxruntime", "genserve")
    assert config.max_batch_size == info.max_images
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("SEED", triton.model_config_pb2.TYPE_INT64, [1], False)
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("IMAGE", triton.model_config_pb2.TYPE_UINT8, [h, w, c]),
        ("IMAGE_FP32", triton.model_config_pb2.TYPE_FP32, [h, w, c]),
    ]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 0  # genserve's default, Triton's too
    assert config.parameters["kind"].string_value == "sampler"


def test_model_config_of_the_diffusion_model_has_an_optional_steps_input(kserve, infos):
    config = kserve.get_model_config(DDPM).config
    assert [(i.name, i.data_type, i.optional) for i in config.input] == [
        ("SEED", triton.model_config_pb2.TYPE_INT64, False),
        ("STEPS", triton.model_config_pb2.TYPE_INT32, True),
    ]
    assert config.parameters["default_steps"].string_value == str(infos[DDPM].default_steps)
    assert config.parameters["diffusion_batching"].string_value == "step"


def test_model_config_follows_the_models_batching_settings(start_server, tmp_path: Path):
    toml = tmp_path / "genserve.toml"
    toml.write_text(
        "[models.dcgan-tiny]\n"
        "preferred_batch_sizes = [8, 4]\n"
        "max_queue_delay_ms = 2.5\n"
        "max_queue_size = 32\n"
        "priority_levels = 2\n"
        "default_timeout_ms = 5000\n"
    )
    process = start_server("--config", str(toml)).wait_until_serving()
    with triton.InferenceServerClient(process.target) as kserve:
        batching = kserve.get_model_config(GAN).config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 2500
    assert (batching.priority_levels, batching.default_priority_level) == (2, 1)
    assert batching.default_queue_policy.max_queue_size == 32
    assert batching.default_queue_policy.default_timeout_microseconds == 5_000_000


def test_repository_index_lists_every_model_ready(kserve, infos):
    index = kserve.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [
        (name, infos[name].version, "READY") for name in sorted(infos)
    ]


def test_reflection_lists_and_describes_the_kserve_service(server):
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert SERVICE in services and "genserve.v1.GenerationService" in services
        file = database.FindFileContainingSymbol(SERVICE)
        config_file = database.FindFileByName("model_config.proto")
    assert file.name == "grpc_service.proto"
    assert list(file.dependency) == ["model_config.proto"]
    assert "ModelInfer" in [m.name for m in file.service[0].method]
    assert "ModelConfig" in [m.name for m in config_file.message_type]


# --- ModelInfer ---------------------------------------------------------------------------------


def test_infer_on_the_sampler_returns_genserves_own_images_byte_for_byte(kserve, client, infos):
    seeds = [3, 5, 7]
    result = kserve.infer(GAN, [seed_input(seeds)], request_id="req-1")
    images = result.as_numpy("IMAGE")
    assert images.dtype == np.uint8
    c, h, w = infos[GAN].image_shape
    assert images.shape == (3, h, w, c)
    assert images.tobytes() == own_images(client, GAN, seeds).tobytes()
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (GAN, infos[GAN].version, "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("IMAGE", "UINT8", [3, h, w, c])]


def test_infer_on_the_diffusion_model_with_steps_returns_genserves_own_images(kserve, client):
    seeds = [11, 12]
    result = kserve.infer(
        DDPM,
        [seed_input(seeds), steps_input([FEW_STEPS] * 2)],
        outputs=[triton.InferRequestedOutput("IMAGE")],
        model_version="",
    )
    assert result.as_numpy("IMAGE").tobytes() == own_images(client, DDPM, seeds, steps=FEW_STEPS).tobytes()


def test_typed_contents_give_the_same_images_as_raw_contents(server, kserve):
    """A request with int64_contents / int_contents instead of raw_input_contents, built with
    tritonclient's generated stubs: the same images as tritonclient's raw request."""
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name=DDPM,
        id="typed",
        inputs=[
            tensor(name="SEED", datatype="INT64", shape=[2, 1], contents=pb.InferTensorContents(int64_contents=[4, 9])),
            tensor(name="STEPS", datatype="INT32", shape=[2, 1], contents=pb.InferTensorContents(int_contents=[2, 2])),
        ],
    )
    with grpc.insecure_channel(server.target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert response.id == "typed" and list(response.outputs[0].shape)[0] == 2
    raw = kserve.infer(DDPM, [seed_input([4, 9]), steps_input([2, 2])]).as_numpy("IMAGE")
    assert response.raw_output_contents[0] == raw.tobytes()


def test_the_rows_of_one_call_share_engine_calls(server, kserve):
    """Each row is its own one-image request to the dynamic batcher, which batches them together."""

    def engine_calls() -> float:
        match = re.search(rf'^genserve_batch_size_count\{{model="{GAN}"\}} (\S+)$', server.scrape_metrics(), re.M)
        return float(match.group(1)) if match else 0.0

    before = engine_calls()
    kserve.infer(GAN, [seed_input(range(16))])
    assert 1 <= engine_calls() - before < 16


def test_statistics_count_calls_queue_and_compute_of_every_row(kserve, infos):
    def stats():
        return kserve.get_inference_statistics(GAN).model_stats[0]

    before = stats()
    kserve.infer(GAN, [seed_input([1, 2, 3, 4])])
    with pytest.raises(InferenceServerException):
        kserve.infer(GAN, [seed_input([1, 2], shape=[2])])
    after = stats()
    assert (after.name, after.version) == (GAN, infos[GAN].version)
    assert after.inference_count == before.inference_count + 4  # engine rows: one image per row
    assert 1 <= after.execution_count - before.execution_count <= 4  # the rows share engine calls
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.last_inference >= before.last_inference > 0
    for part in ("queue", "compute_infer"):  # each row is one request of the scheduler
        was, now = getattr(before.inference_stats, part), getattr(after.inference_stats, part)
        assert now.count == was.count + 4, part
        assert now.ns > was.ns, part
    everything = kserve.get_inference_statistics()
    assert sorted(s.name for s in everything.model_stats) == sorted(infos)
    # batch_stats: every engine call once, under its batch size, as Triton counts executions
    sizes = {b.batch_size: b for b in after.batch_stats}
    assert sum(b.compute_infer.count for b in sizes.values()) == after.execution_count
    assert sum(size * b.compute_infer.count for size, b in sizes.items()) == after.inference_count
    assert all(b.compute_infer.ns > 0 and b.compute_input.count == b.compute_infer.count for b in sizes.values())


def test_statistics_of_the_diffusion_model_count_each_rows_steps_as_compute(kserve):
    def stats():
        return kserve.get_inference_statistics(DDPM).model_stats[0]

    before = stats()
    kserve.infer(DDPM, [seed_input([5, 6]), steps_input([3, 3])])
    after = stats()
    assert after.inference_count == before.inference_count + 2 * 3  # image-steps
    assert 3 <= after.execution_count - before.execution_count <= 6  # one engine call per step
    compute = after.inference_stats.compute_infer
    assert compute.count == before.inference_stats.compute_infer.count + 2
    assert after.inference_stats.queue.count == before.inference_stats.queue.count + 2
    # Each row took part in its 3 steps: at least 3 engine calls' worth of compute per row.
    per_row_ns = (compute.ns - before.inference_stats.compute_infer.ns) / 2
    assert per_row_ns >= 3 * 1e3


# --- Errors -------------------------------------------------------------------------------------


def test_unknown_model_is_not_found_and_lists_the_served_models(kserve):
    for call in (
        lambda: kserve.infer("no-such-model", [seed_input([1])]),
        lambda: kserve.get_model_metadata("no-such-model"),
        lambda: kserve.get_model_config("no-such-model"),
        lambda: kserve.get_inference_statistics("no-such-model"),
    ):
        err = triton_error(call)
        assert err.status() == "StatusCode.NOT_FOUND"
        assert "no model named 'no-such-model'" in err.message() and GAN in err.message()


def test_unknown_version_is_not_found_naming_the_served_one(kserve, infos):
    err = triton_error(lambda: kserve.infer(GAN, [seed_input([1])], model_version="no-such-version"))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "no version 'no-such-version'" in err.message() and repr(infos[GAN].version) in err.message()


def kserve_input(name: str, datatype: str, shape: list[int], data: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(data)
    return tensor


BAD_REQUESTS = [
    pytest.param(
        GAN,
        lambda: [seed_input([1, 2], datatype="INT32")],
        "input SEED of model dcgan-tiny must be INT64, got INT32",
        id="wrong-datatype",
    ),
    pytest.param(
        GAN,
        lambda: [seed_input([1, 2], shape=[2])],
        "must have shape [batch, 1] (dims [1] with a batch dimension), got [2]",
        id="wrong-shape",
    ),
    pytest.param(
        GAN,
        lambda: [kserve_input("NOISE", "INT64", [1, 1], np.ones((1, 1), np.int64))],
        "model dcgan-tiny has no input named 'NOISE'; its inputs: SEED (INT64 [-1, 1])",
        id="unknown-input",
    ),
    pytest.param(
        GAN,
        lambda: [seed_input([1]), steps_input([3])],
        "model dcgan-tiny has no input named 'STEPS'",
        id="steps-on-a-sampler",
    ),
    pytest.param(
        GAN,
        lambda: [seed_input(range(257))],
        "has batch size 257; it must be in [1, 256] (max_batch_size of dcgan-tiny)",
        id="batch-over-max-batch-size",
    ),
    pytest.param(
        GAN,
        lambda: [seed_input([], shape=[0, 1])],
        "has batch size 0; it must be in [1, 256]",
        id="empty-batch",
    ),
    pytest.param(DDPM, lambda: [steps_input([3])], "model ddpm-tiny needs input SEED", id="missing-seed"),
    pytest.param(
        DDPM,
        lambda: [seed_input([1, 2]), steps_input([3, 4])],
        "input STEPS must be the same on every row, got [3, 4]",
        id="steps-differ-by-row",
    ),
    pytest.param(
        DDPM,
        lambda: [seed_input([1, 2]), steps_input([3])],
        "input STEPS has 1 rows but SEED has 2; give every input the same",
        id="steps-rows-differ",
    ),
    pytest.param(
        DDPM,
        lambda: [seed_input([1]), steps_input([0])],
        "steps must be in [1, 1000] for model ddpm-tiny, got 0",
        id="steps-out-of-range",
    ),
]


@pytest.mark.parametrize(("model", "inputs", "message"), BAD_REQUESTS)
def test_a_request_outside_the_contract_is_invalid_argument_saying_why(kserve, model, inputs, message):
    err = triton_error(lambda: kserve.infer(model, inputs()))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.message()


def test_an_unknown_requested_output_is_invalid_argument(kserve):
    err = triton_error(lambda: kserve.infer(GAN, [seed_input([1])], outputs=[triton.InferRequestedOutput("LOGITS")]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "model dcgan-tiny has no output named 'LOGITS'; its outputs: IMAGE (UINT8 [-1, 28, 28, 1])" in err.message()


def test_raw_contents_of_the_wrong_size_are_invalid_argument(server):
    request = pb.ModelInferRequest(
        model_name=GAN,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="INT64", shape=[2, 1])],
        raw_input_contents=[np.int64(5).tobytes()],
    )
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 16 bytes of raw_input_contents, got 8" in info.value.details()


def test_rpcs_genserve_does_not_implement_are_unimplemented(kserve):
    err = triton_error(lambda: kserve.load_model(GAN))
    assert err.status() == "StatusCode.UNIMPLEMENTED"


def test_a_call_past_its_deadline_stops_and_frees_its_model(server, kserve):
    err = triton_error(
        lambda: kserve.infer(DDPM, [seed_input(range(8)), steps_input([1000] * 8)], client_timeout=1.0)
    )  # tens of seconds of work
    assert err.status() == "StatusCode.DEADLINE_EXCEEDED"
    images = kserve.infer(DDPM, [seed_input([1]), steps_input([FEW_STEPS])], client_timeout=10.0)
    assert images.as_numpy("IMAGE").shape[0] == 1


def test_the_timeout_parameter_bounds_the_call_on_the_server(kserve):
    """tritonclient's ``timeout=`` (microseconds, a request parameter) becomes the rows' queue timeout."""
    err = triton_error(lambda: kserve.infer(DDPM, [seed_input(range(8)), steps_input([1000] * 8)], timeout=200_000))
    assert err.status() == "StatusCode.DEADLINE_EXCEEDED"


# --- Class labels, translators, the float output, streaming --------------------------------------


def label_input(labels: list[int]) -> triton.InferInput:
    return kserve_input("LABEL", "INT32", [len(labels), 1], np.asarray(labels, np.int32).reshape(-1, 1))


def source_input(images: np.ndarray) -> triton.InferInput:
    return kserve_input("SOURCE", "UINT8", list(images.shape), images)


def test_a_conditional_sampler_takes_an_optional_label_per_row(kserve, client, infos):
    config = kserve.get_model_config(CGAN).config
    assert [(i.name, i.optional) for i in config.input] == [("SEED", False), ("LABEL", True)]
    got = kserve.infer(CGAN, [seed_input([4, 4, 9]), label_input([0, 7, 7])]).as_numpy("IMAGE")
    own = [client.generate(CGAN, 1, seed=s, label=k)[0] for s, k in [(4, 0), (4, 7), (9, 7)]]
    np.testing.assert_array_equal(got, np.stack(own))
    unlabelled = kserve.infer(CGAN, [seed_input([4])]).as_numpy("IMAGE")
    np.testing.assert_array_equal(unlabelled[0], client.generate(CGAN, 1, seed=4)[0])
    err = triton_error(lambda: kserve.infer(CGAN, [seed_input([1]), label_input([10])]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "label" in err.message()


@pytest.mark.parametrize("model", [PIX2PIX, SUPERRES])
def test_a_translator_takes_source_images_and_returns_genserves_own_translation(kserve, client, infos, model):
    c, h, w = infos[model].input_shape
    metadata = kserve.get_model_metadata(model)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("SOURCE", "UINT8", [-1, h, w, c])]
    sources = np.random.default_rng(0).integers(0, 256, size=(3, h, w, c), dtype=np.uint8)
    got = kserve.infer(model, [source_input(sources)]).as_numpy("IMAGE")
    np.testing.assert_array_equal(got, client.translate(model, sources))


def test_a_translator_refuses_a_wrong_image_size_naming_the_expected_one(kserve, infos):
    c, h, w = infos[SUPERRES].input_shape
    wrong = np.zeros((1, 28, 28, c), np.uint8)
    err = triton_error(lambda: kserve.infer(SUPERRES, [source_input(wrong)]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"input SOURCE of model {SUPERRES} must have shape [batch, {h}, {w}, {c}]" in err.message()


def test_typed_uint_contents_carry_source_images(server, client, infos):
    c, h, w = infos[PIX2PIX].input_shape
    image = np.arange(h * w * c, dtype=np.uint8).reshape(1, h, w, c)
    tensor = pb.ModelInferRequest.InferInputTensor(name="SOURCE", datatype="UINT8", shape=[1, h, w, c])
    tensor.contents.uint_contents.extend(image.ravel().tolist())
    with grpc.insecure_channel(server.target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name=PIX2PIX, inputs=[tensor]), timeout=60
        )
    got = np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(1, *image_dims(infos[PIX2PIX]))
    np.testing.assert_array_equal(got, client.translate(PIX2PIX, image))


def image_dims(info) -> tuple[int, int, int]:
    c, h, w = info.image_shape
    return h, w, c


def test_the_float_output_is_the_image_over_255_and_only_sent_when_asked(kserve):
    plain = kserve.infer(GAN, [seed_input([2, 3])])
    assert plain.as_numpy("IMAGE_FP32") is None
    both = kserve.infer(
        GAN,
        [seed_input([2, 3])],
        outputs=[triton.InferRequestedOutput("IMAGE_FP32"), triton.InferRequestedOutput("IMAGE")],
    )
    floats = both.as_numpy("IMAGE_FP32")
    assert floats.dtype == np.float32 and floats.shape == plain.as_numpy("IMAGE").shape
    np.testing.assert_array_equal(floats, plain.as_numpy("IMAGE") / np.float32(255))


def test_stream_infer_answers_every_request_and_reports_errors_without_ending_the_stream(kserve, client):
    import queue

    answers: queue.Queue = queue.Queue()
    kserve.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        kserve.async_stream_infer(GAN, [seed_input([11])], request_id="a")
        kserve.async_stream_infer(GAN, [seed_input([1], datatype="INT32")], request_id="bad")
        kserve.async_stream_infer(DDPM, [seed_input([12]), steps_input([2])], request_id="b")
        got = [answers.get(timeout=60) for _ in range(3)]
    finally:
        kserve.stop_stream()
    results = {r.get_response().id: r for r, e in got if e is None}
    errors = [e for _, e in got if e is not None]
    assert sorted(results) == ["a", "b"]
    np.testing.assert_array_equal(results["a"].as_numpy("IMAGE")[0], client.generate(GAN, 1, seed=11)[0])
    np.testing.assert_array_equal(results["b"].as_numpy("IMAGE")[0], client.generate(DDPM, 1, seed=12, steps=2)[0])
    assert len(errors) == 1 and "must be INT64, got INT32" in errors[0].message()


def test_a_stream_message_that_does_not_parse_ends_the_stream_at_once_invalid_argument(server):
    """Reading the stream fails on the second message: the stream ends with that error, it does not
    wait for its deadline (it did: no end-of-answers was queued when reading raised)."""
    seed = pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="INT64", shape=[1, 1])
    good = pb.ModelInferRequest(model_name=GAN, inputs=[seed], raw_input_contents=[np.int64(5).tobytes()])
    garbage = b"\x0a\xff\xff\xff\x0f"  # field 1, length-delimited, 4 GiB long: never a ModelInferRequest
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(garbage)
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")  # bytes in, bytes out
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([good.SerializeToString(), garbage]), timeout=30))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert time.monotonic() - started < 10
