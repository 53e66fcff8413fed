"""GenerationService, health and reflection over a real server with the real client."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genserve.client import GenserveClient
from genserve.images import decode_png
from genserve.schedule import Sampler
from genserve.serving import convert
from genserve.serving.domain import GenerateRequest
from genserve.serving.pb import genserve_pb2_grpc
from genserve.signature import ModelKind

DDPM, GAN = "ddpm-tiny", "dcgan-tiny"
FEW_STEPS = 3  # the default 1000-step schedule is far too slow for tests
KINDS = [pytest.param(DDPM, {"steps": FEW_STEPS}, id="diffusion"), pytest.param(GAN, {}, id="sampler")]


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_list_models_describes_the_tiny_diffusion_model_and_sampler(client: GenserveClient):
    infos = {info.name: info for info in client.list_models()}
    assert list(infos) == sorted(infos) and {GAN, DDPM} <= set(infos)
    ddpm, gan = infos[DDPM], infos[GAN]
    assert ddpm.kind is ModelKind.DIFFUSION and gan.kind is ModelKind.SAMPLER
    assert ddpm.image_shape == gan.image_shape == (1, 28, 28)
    assert ddpm.max_images == gan.max_images == 256
    assert (ddpm.num_timesteps, ddpm.default_steps, ddpm.default_sampler) == (1000, 1000, Sampler.DDPM)
    assert (gan.num_timesteps, gan.default_steps, gan.default_sampler) == (None, None, None)
    assert ddpm.version == "1"


@pytest.mark.parametrize(("model", "options"), KINDS)
def test_generate_returns_the_requested_number_of_uint8_images(client: GenserveClient, model, options):
    images = client.generate(model, 3, seed=1, **options)
    assert images.dtype == np.uint8
    assert images.shape == (3, 28, 28, 1)


@pytest.mark.parametrize(("model", "options"), KINDS)
def test_png_and_raw_images_have_the_same_pixels(client: GenserveClient, model, options):
    raw = client.generate(model, 2, seed=5, **options)
    pngs = client.generate_png(model, 2, seed=5, **options)
    assert len(pngs) == 2
    for png, image in zip(pngs, raw, strict=True):
        np.testing.assert_array_equal(decode_png(png), image[:, :, 0])


def test_unspecified_encoding_returns_png_and_raw(server):
    request = convert.generate_request_to_proto(GenerateRequest(GAN, 2, seed=3))
    request.encoding = 0  # IMAGE_ENCODING_UNSPECIFIED, what a client that does not set it sends
    with grpc.insecure_channel(server.target) as channel:
        response = genserve_pb2_grpc.GenerationServiceStub(channel).Generate(request, timeout=60)
    assert response.model == GAN
    raw = convert.images_from_response(response)
    for png, image in zip(convert.pngs_from_response(response), raw, strict=True):
        np.testing.assert_array_equal(decode_png(png), image[:, :, 0])


@pytest.mark.parametrize(("model", "options"), KINDS)
def test_same_model_seed_and_count_give_byte_identical_images(client: GenserveClient, model, options):
    first = client.generate(model, 4, seed=7, **options)
    second = client.generate(model, 4, seed=7, **options)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize(("model", "options"), KINDS)
def test_different_seeds_give_different_images(client: GenserveClient, model, options):
    a = client.generate(model, 2, seed=1, **options)
    b = client.generate(model, 2, seed=2, **options)
    assert not np.array_equal(a, b)


def test_an_image_does_not_depend_on_how_many_were_requested(client: GenserveClient):
    two = client.generate(DDPM, 2, seed=11, steps=FEW_STEPS)
    five = client.generate(DDPM, 5, seed=11, steps=FEW_STEPS)
    np.testing.assert_array_equal(five[:2], two)


def test_unspecified_sampler_on_few_steps_is_deterministic_ddim(client: GenserveClient):
    default = client.generate(DDPM, 2, seed=4, steps=5)
    ddim = client.generate(DDPM, 2, seed=4, steps=5, sampler="ddim", eta=0.0)
    np.testing.assert_array_equal(default, ddim)


def test_ddpm_and_stochastic_ddim_are_accepted_on_few_steps(client: GenserveClient):
    assert client.generate(DDPM, 1, steps=4, sampler=Sampler.DDPM).shape == (1, 28, 28, 1)
    assert client.generate(DDPM, 1, steps=4, sampler=Sampler.DDIM, eta=1.0).shape == (1, 28, 28, 1)


def test_unknown_model_is_not_found_and_lists_the_served_models(client: GenserveClient):
    err = rpc_error(lambda: client.generate("no-such-model", 1))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in err.details()
    assert DDPM in err.details() and GAN in err.details()


@pytest.mark.parametrize("num_images", [0, -1, 257])
@pytest.mark.parametrize("model", [DDPM, GAN])
def test_num_images_outside_the_limit_is_invalid_argument_naming_the_range(server, model, num_images):
    """One request above the limit is refused (the client splits such calls: test_large_requests)."""
    request = convert.generate_request_to_proto(GenerateRequest(model, num_images))
    with grpc.insecure_channel(server.target) as channel:
        stub = genserve_pb2_grpc.GenerationServiceStub(channel)
        err = rpc_error(lambda: stub.Generate(request, timeout=60))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "[1, 256]" in err.details()
    assert str(num_images) in err.details()


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_steps_outside_the_schedule_is_invalid_argument_naming_the_range(client: GenserveClient, steps):
    err = rpc_error(lambda: client.generate(DDPM, 1, steps=steps))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "[1, 1000]" in err.details()


@pytest.mark.parametrize("option", [{"steps": 5}, {"sampler": "ddim"}, {"eta": 0.5}])
def test_diffusion_options_on_the_gan_are_invalid_argument(client: GenserveClient, option):
    err = rpc_error(lambda: client.generate(GAN, 1, **option))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "diffusion models only" in err.details()


def test_eta_with_the_ddpm_sampler_is_invalid_argument(client: GenserveClient):
    err = rpc_error(lambda: client.generate(DDPM, 1, steps=FEW_STEPS, sampler="ddpm", eta=0.5))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "DDIM" in err.details()


def test_eta_outside_zero_one_is_invalid_argument(client: GenserveClient):
    err = rpc_error(lambda: client.generate(DDPM, 1, steps=FEW_STEPS, sampler="ddim", eta=1.5))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "[0, 1]" in err.details()


@pytest.mark.parametrize(("field", "value"), [("sampler", 7), ("encoding", 42)])
def test_enum_values_the_proto_does_not_define_are_invalid_argument(server, field, value):
    request = convert.generate_request_to_proto(GenerateRequest(DDPM, 1, steps=FEW_STEPS))
    setattr(request, field, value)
    with grpc.insecure_channel(server.target) as channel:
        stub = genserve_pb2_grpc.GenerationServiceStub(channel)
        err = rpc_error(lambda: stub.Generate(request, timeout=60))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details() and str(value) in err.details()


def test_missing_model_name_is_invalid_argument(client: GenserveClient):
    err = rpc_error(lambda: client.generate("", 1))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_health_reports_serving_for_the_server_and_the_service(client: GenserveClient):
    assert client.health() == "SERVING"
    assert client.health(convert.SERVICE_NAME) == "SERVING"


def test_reflection_lists_and_describes_the_services(server):
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert "genserve.v1.GenerationService" in services
        assert "grpc.health.v1.Health" in services
        file = database.FindFileContainingSymbol("genserve.v1.GenerationService")
    assert file.name == "genserve/v1/genserve.proto"
    assert [m.name for m in file.service[0].method] == [
        "ListModels",
        "Generate",
        "GenerateStream",
        "Translate",
        "LogLikelihood",
    ]


def test_a_call_past_its_deadline_stops_and_frees_its_model(server):
    with GenserveClient(server.target, timeout=1.0) as impatient:
        err = rpc_error(lambda: impatient.generate(DDPM, 8, steps=1000))  # tens of seconds of work
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with GenserveClient(server.target, timeout=10.0) as next_in_line:  # would wait out the abandoned request
        assert next_in_line.generate(DDPM, 1, steps=FEW_STEPS).shape == (1, 28, 28, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from([GAN, DDPM, "", "no-such-model"]),
    num_images=st.sampled_from([-1, 0, 1, 2, 257, 2**31 - 1]),
    steps=st.sampled_from([None, -3, 0, 1, 2, 1001, 2**31 - 1]),
    sampler=st.sampled_from([0, 1, 2, 9]),
    eta=st.sampled_from([None, -0.5, 0.0, 0.7, 2.0, float("nan")]),
    encoding=st.sampled_from([0, 1, 3, 77]),
    priority=st.sampled_from([0, 1, 2, 2**32 - 1]),
    timeout_ms=st.sampled_from([None, 0, 1, 60_000]),
)
def test_no_request_a_client_can_send_gets_internal_or_unknown(
    server, model, num_images, steps, sampler, eta, encoding, priority, timeout_ms
):
    """Client mistakes map to INVALID_ARGUMENT, NOT_FOUND or DEADLINE_EXCEEDED; valid ones succeed."""
    msg = convert.generate_request_to_proto(GenerateRequest("x", 1))
    msg.model, msg.num_images, msg.sampler, msg.encoding, msg.priority = model, num_images, sampler, encoding, priority
    if model == DDPM and steps is None:
        steps = FEW_STEPS  # unset = the 1000-step default: valid, and too slow for a property test
    if steps is not None:
        msg.steps = steps
    if eta is not None:
        msg.eta = eta
    if timeout_ms is not None:
        msg.timeout_ms = timeout_ms
    with grpc.insecure_channel(server.target) as channel:
        stub = genserve_pb2_grpc.GenerationServiceStub(channel)
        try:
            stub.Generate(msg, timeout=60)
        except grpc.RpcError as err:
            assert err.code() in {
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            }, f"{err.code().name}: {err.details()}"
            assert err.details(), "an error without a message"
