"""The newer families through the serving core and a real server (``curriculum_models``: small
random-init networks, real export): PixelCNN as the step scheduler's second iterative kind
(with a classifier-free guidance scale per request),
latent diffusion finishing through its decoder, a flow's temperature and ``LogLikelihood`` on both
APIs, and a StyleGAN's per-request truncation and style mixing."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from genserve.client import GenserveClient
from genserve.serving.config import ModelSettings
from genserve.serving.diffusion import DiffusionScheduler
from genserve.serving.domain import GenerateRequest, LikelihoodRequest
from genserve.serving.runner import ModelRunner
from genserve.signature import ModelKind
from tests.fixtures import FLOW, LDM, PIXELCNN, STYLEGAN
from tests.integration.test_kserve import kserve_input
from tests.integration.test_step_batching import assert_batch_invariant


@pytest.fixture
def executor():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def pixelcnn(curriculum_models: Path) -> ModelRunner:
    return ModelRunner(curriculum_models / PIXELCNN)


@pytest.fixture(scope="module")
def curriculum_server(curriculum_models: Path):
    from tests.integration.servers import ServerProcess

    process = ServerProcess(curriculum_models, metrics=True)
    try:
        yield process.wait_until_serving()
    finally:
        process.stop()


@pytest.fixture
def client(curriculum_server) -> GenserveClient:
    with GenserveClient(curriculum_server.target, timeout=120) as c:
        yield c


# --- PixelCNN: the second iterative kind ---------------------------------------------------------


def test_an_autoregressive_plan_is_one_step_per_pixel_at_the_requests_temperature(pixelcnn):
    plan = pixelcnn.validate(GenerateRequest(PIXELCNN, 1, temperature=0.5))
    np.testing.assert_array_equal(plan.timesteps, np.arange(784))
    assert np.all(plan.coefs[:, 0] == 2.0)
    with pytest.raises(Exception, match="steps applies to diffusion models only"):
        pixelcnn.validate(GenerateRequest(PIXELCNN, 1, steps=10))
    with pytest.raises(Exception, match="temperature must be in"):
        pixelcnn.validate(GenerateRequest(PIXELCNN, 1, temperature=0.0))


def test_pixelcnn_requests_share_each_steps_batch_and_are_batch_invariant(pixelcnn, executor):
    """Three requests at once run as one batch of slots (the largest batch holds all five images),
    and each gets exactly the images it gets alone."""
    requests = [
        GenerateRequest(PIXELCNN, 2, seed=1, label=3),
        GenerateRequest(PIXELCNN, 1, seed=2),
        GenerateRequest(PIXELCNN, 2, seed=3, temperature=0.7, guidance=0.5),
    ]

    async def scenario():
        scheduler = DiffusionScheduler(pixelcnn, ModelSettings(), executor)
        largest = 0

        async def watch():
            nonlocal largest
            while True:
                largest = max(largest, scheduler.active_slots)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(scheduler.submit(r) for r in requests))
        watcher.cancel()
        await scheduler.close()
        return largest, results

    largest, results = asyncio.run(scenario())
    assert largest == 5
    for request, images in zip(requests, results, strict=True):
        assert images.shape == (request.num_images, 28, 28, 1)
        assert_batch_invariant(images, pixelcnn.generate(request))


def test_a_pixelcnn_images_are_its_own_and_the_temperature_and_label_change_them(pixelcnn):
    base = pixelcnn.generate(GenerateRequest(PIXELCNN, 2, seed=4, label=1))
    np.testing.assert_array_equal(base, pixelcnn.generate(GenerateRequest(PIXELCNN, 2, seed=4, label=1)))
    assert (base != pixelcnn.generate(GenerateRequest(PIXELCNN, 2, seed=4, label=1, temperature=0.3))).any()
    assert (base != pixelcnn.generate(GenerateRequest(PIXELCNN, 2, seed=4, label=2))).any()


def test_a_guided_pixelcnn_takes_its_default_scale_unless_the_request_sets_one(pixelcnn):
    request = GenerateRequest(PIXELCNN, 2, seed=4, label=1)
    assert pixelcnn.validate(request).guidance == 2.0  # the manifest's default_guidance
    assert pixelcnn.validate(GenerateRequest(PIXELCNN, 2, guidance=0.0)).guidance == 0.0
    base = pixelcnn.generate(request)
    np.testing.assert_array_equal(base, pixelcnn.generate(GenerateRequest(PIXELCNN, 2, seed=4, label=1, guidance=2.0)))
    assert (base != pixelcnn.generate(GenerateRequest(PIXELCNN, 2, seed=4, label=1, guidance=1.0))).any()
    with pytest.raises(Exception, match="guidance must be in"):
        pixelcnn.validate(GenerateRequest(PIXELCNN, 1, guidance=-1.0))


def test_cancelling_a_pixelcnn_request_frees_its_slots_at_the_next_step(pixelcnn, executor):
    async def scenario():
        scheduler = DiffusionScheduler(pixelcnn, ModelSettings(), executor)
        task = asyncio.create_task(scheduler.submit(GenerateRequest(PIXELCNN, 3, seed=1)))
        while scheduler.active_slots < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        while scheduler.active_slots:
            await asyncio.sleep(0.001)
        follow = await scheduler.submit(GenerateRequest(PIXELCNN, 1, seed=2))
        await scheduler.close()
        return follow

    assert asyncio.run(scenario()).shape == (1, 28, 28, 1)


# --- the server: listing, options, likelihood --------------------------------------------------


def test_models_list_the_new_kinds_with_their_inputs(client):
    infos = {i.name: i for i in client.list_models()}
    assert infos[PIXELCNN].kind is ModelKind.AUTOREGRESSIVE and infos[PIXELCNN].num_steps == 784
    assert {"temperature", "label", "guidance"} <= set(infos[PIXELCNN].request_fields)
    assert infos[PIXELCNN].default_guidance == 2.0
    assert infos[FLOW].default_guidance is None and "guidance" not in infos[FLOW].request_fields
    assert infos[FLOW].likelihood and infos[FLOW].default_temperature == 1.0
    assert infos[STYLEGAN].style_layers and "mix_layer" in infos[STYLEGAN].request_fields
    assert infos[LDM].kind is ModelKind.DIFFUSION and not infos[LDM].likelihood


def test_pixelcnn_streams_progress_per_pixel_with_previews(client):
    events = list(client.generate_stream(PIXELCNN, 1, seed=5, preview_every=392))
    assert events[-1].images.shape == (1, 28, 28, 1)
    assert events[-1].total == 784
    assert any(e.previews for e in events[:-1])


def test_latent_diffusion_over_the_server_equals_the_in_process_runner(client, curriculum_models):
    got = client.generate(LDM, 3, seed=7, steps=12)
    want = ModelRunner(curriculum_models / LDM).generate(GenerateRequest(LDM, 3, seed=7, steps=12))
    assert_batch_invariant(got, want)


def test_a_flows_temperature_scales_its_latent(client, curriculum_models):
    runner = ModelRunner(curriculum_models / FLOW)
    got = client.generate(FLOW, 2, seed=3, temperature=0.5)
    np.testing.assert_array_equal(got, runner.generate(GenerateRequest(FLOW, 2, seed=3, temperature=0.5)))
    assert (got != client.generate(FLOW, 2, seed=3)).any()


def test_log_likelihood_over_both_apis_equals_the_likelihood_graph(client, curriculum_server, curriculum_models):
    images = client.generate(FLOW, 3, seed=1)
    runner = ModelRunner(curriculum_models / FLOW)
    want = runner.run_likelihood([(LikelihoodRequest(FLOW, tuple(images)), 0, 3)])
    bits = client.log_likelihood(FLOW, images)
    np.testing.assert_allclose(bits, want, rtol=1e-6)
    kserve = triton.InferenceServerClient(curriculum_server.target)
    source = kserve_input("SOURCE", "UINT8", list(images.shape), images)
    result = kserve.infer(FLOW, [source])
    np.testing.assert_allclose(result.as_numpy("BITS_PER_DIM")[:, 0], want, rtol=1e-6)


def test_a_kserve_call_takes_seed_or_source_not_both(curriculum_server):
    kserve = triton.InferenceServerClient(curriculum_server.target)
    seed = kserve_input("SEED", "INT64", [1, 1], np.array([[1]], np.int64))
    source = kserve_input("SOURCE", "UINT8", [1, 28, 28, 1], np.zeros((1, 28, 28, 1), np.uint8))
    with pytest.raises(InferenceServerException, match="either SEED"):
        kserve.infer(FLOW, [seed, source])
    assert kserve.infer(FLOW, [seed]).as_numpy("IMAGE").shape == (1, 28, 28, 1)


@pytest.mark.parametrize(
    ("model", "call", "message"),
    [
        (STYLEGAN, "likelihood", "has no likelihood"),
        (FLOW, "wrong_size", "expected 28x28 grayscale images"),
        (STYLEGAN, "temperature", "temperature applies to autoregressive models and flows only"),
        (FLOW, "truncation", "truncation applies to style-based models only"),
        (STYLEGAN, "mix_layer_alone", "mix_layer needs mix_seed"),
        (STYLEGAN, "mix_layer_range", "mix_layer must be in"),
        (PIXELCNN, "hot", "temperature must be in"),
        (PIXELCNN, "overguided", "guidance must be in [0, 20]"),
        (FLOW, "guidance", "guidance applies to guided class-conditional models only"),
    ],
)
def test_options_outside_a_model_are_invalid_argument(client, model, call, message):
    calls = {
        "likelihood": lambda: client.log_likelihood(model, np.zeros((1, 28, 28), np.uint8)),
        "wrong_size": lambda: client.log_likelihood(model, np.zeros((1, 14, 14), np.uint8)),
        "temperature": lambda: client.generate(model, 1, temperature=0.5),
        "truncation": lambda: client.generate(model, 1, truncation=0.5),
        "mix_layer_alone": lambda: client.generate(model, 1, mix_layer=1),
        "mix_layer_range": lambda: client.generate(model, 1, mix_seed=2, mix_layer=99),
        "hot": lambda: client.generate(model, 1, temperature=50.0),
        "overguided": lambda: client.generate(model, 1, guidance=21.0),
        "guidance": lambda: client.generate(model, 1, guidance=2.0),
    }
    with pytest.raises(grpc.RpcError) as err:
        calls[call]()
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_style_truncation_and_mixing_over_both_apis(client, curriculum_server):
    average = client.generate(STYLEGAN, 3, seed=1, truncation=0.0)
    assert (average == average[0]).all()  # psi = 0: every image is the average style's
    mixed = client.generate(STYLEGAN, 2, seed=1, mix_seed=9, mix_layer=0)
    np.testing.assert_array_equal(mixed, client.generate(STYLEGAN, 2, seed=9))  # every layer from seed 9
    partly = client.generate(STYLEGAN, 2, seed=1, mix_seed=9, mix_layer=2)
    assert (partly != mixed).any() and (partly != client.generate(STYLEGAN, 2, seed=1)).any()
    kserve = triton.InferenceServerClient(curriculum_server.target)
    inputs = [
        kserve_input("SEED", "INT64", [1, 1], np.array([[1]], np.int64)),
        kserve_input("TRUNCATION", "FP32", [1, 1], np.array([[0.5]], np.float32)),
        kserve_input("MIX_SEED", "INT64", [1, 1], np.array([[9]], np.int64)),
        kserve_input("MIX_LAYER", "INT32", [1, 1], np.array([[2]], np.int32)),
    ]
    image = kserve.infer(STYLEGAN, inputs).as_numpy("IMAGE")
    want = client.generate(STYLEGAN, 1, seed=1, truncation=0.5, mix_seed=9, mix_layer=2)
    np.testing.assert_array_equal(image, want)


def test_a_pixelcnns_guidance_over_kserve_equals_the_native_api(client, curriculum_server):
    kserve = triton.InferenceServerClient(curriculum_server.target)
    inputs = [
        kserve_input("SEED", "INT64", [1, 1], np.array([[3]], np.int64)),
        kserve_input("LABEL", "INT32", [1, 1], np.array([[6]], np.int32)),
        kserve_input("GUIDANCE", "FP32", [1, 1], np.array([[4.0]], np.float32)),
    ]
    image = kserve.infer(PIXELCNN, inputs).as_numpy("IMAGE")
    np.testing.assert_array_equal(image, client.generate(PIXELCNN, 1, seed=3, label=6, guidance=4.0))
    assert (image != client.generate(PIXELCNN, 1, seed=3, label=6)).any()


def test_pixelcnn_requests_share_steps_on_the_server(client, curriculum_server):
    """Four one-image calls at once: the batch-size histogram (image slots per step) records steps
    that ran more than one slot, so images of different requests shared them."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: client.generate(PIXELCNN, 1, seed=s), range(4)))
    assert all(r.shape == (1, 28, 28, 1) for r in results)
    lines = [line for line in curriculum_server.scrape_metrics().splitlines() if f'model="{PIXELCNN}"' in line]
    single = next(float(x.split()[-1]) for x in lines if x.startswith("genserve_batch_size_bucket") and 'le="1.0"' in x)
    count = next(float(x.split()[-1]) for x in lines if x.startswith("genserve_batch_size_count"))
    assert single < count


@pytest.mark.parametrize("model", [LDM, STYLEGAN])
def test_the_torch_backend_serves_the_new_kinds_as_onnx_runtime_does(curriculum_models, model):
    """The torch backend's device slots (and the decoder / style inputs) against ONNX Runtime."""
    from genserve.serving.config import Backend

    request = GenerateRequest(model, 2, seed=3, **({"steps": 6} if model == LDM else {}))
    onnx = ModelRunner(curriculum_models / model).generate(request)
    torch_images = ModelRunner(curriculum_models / model, Backend.TORCH).generate(request)
    assert_batch_invariant(torch_images, onnx)


def test_the_torch_backends_pixelcnn_slots_step_as_onnx_runtimes(curriculum_models):
    """The first 40 pixels of two images (a whole image is 784 steps of Python-side torch work
    on the CPU): the torch slot state and the host one sample the same levels."""
    from genserve.serving.config import Backend

    request = GenerateRequest(PIXELCNN, 2, seed=3, label=4, temperature=0.8)
    values = []
    for backend in (Backend.ONNXRUNTIME, Backend.TORCH):
        runner = ModelRunner(curriculum_models / PIXELCNN, backend)
        plan = runner.validate(request)
        seeds, index = np.full(2, 3, dtype=np.int64), np.arange(2, dtype=np.int64)
        state = runner.open_slots(capacity=4)
        state.join(0, seeds, index, plan.timesteps, plan.coefs, runner.step_conditioning(seeds, index, plan, 4))
        state.step(2, 40)
        values.append(state.values(range(2)))
    np.testing.assert_allclose(values[1], values[0], atol=1e-6)
    assert np.count_nonzero(values[0].reshape(2, -1)[:, 40:]) == 0  # later pixels stay zero


def test_the_torch_backend_computes_the_same_likelihoods(curriculum_models):
    from genserve.serving.config import Backend

    images = ModelRunner(curriculum_models / FLOW).generate(GenerateRequest(FLOW, 3, seed=2))
    parts = [(LikelihoodRequest(FLOW, tuple(images)), 0, 3)]
    want = ModelRunner(curriculum_models / FLOW).run_likelihood(parts)
    np.testing.assert_allclose(
        ModelRunner(curriculum_models / FLOW, Backend.TORCH).run_likelihood(parts), want, rtol=1e-5
    )
