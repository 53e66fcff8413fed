"""What only the gRPC transport decides (``serve --frontend``), checked on both transports: which one
runs, unknown methods, the message size limit, bursts and client cancellations. Everything else
(every RPC, streaming, reflection, health, deadlines, shutdown) runs on both through the
``server`` and ``frontend`` fixtures."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from genserve.client import GenserveClient
from genserve.serving import native
from genserve.serving.config import MAX_MESSAGE_BYTES
from tests.integration.servers import ServerProcess
from tests.integration.test_family_serving import metric, wait_for

DDPM, GAN = "ddpm-tiny", "dcgan-tiny"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def test_the_server_runs_on_the_native_transport_when_it_is_built(start_server):
    server = start_server().wait_until_listening()
    expected = "native" if native.available() else "grpcio"
    server.wait_for_line(rf"gRPC transport: {expected}")
    asked = start_server("--frontend", "grpcio").wait_until_listening()
    asked.wait_for_line(r"gRPC transport: grpcio \S+ \(asked for\)")


def test_frontend_native_serves_or_stops_with_the_command_that_builds_it(start_server):
    server = start_server("--frontend", "native")
    if native.available():
        server.wait_until_serving()
        assert "gRPC transport: native" in server.log
    else:
        assert server.wait(timeout=60) == 1
        assert "serving/native/build.sh" in server.log


def test_an_unknown_method_is_unimplemented(server: ServerProcess):
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/genserve.v1.NoSuchService/Nothing")
        with pytest.raises(grpc.RpcError) as err:
            call(b"", timeout=10)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_a_message_over_the_size_limit_is_refused_and_the_server_goes_on(server: ServerProcess):
    request = pb.ModelInferRequest(model_name=GAN, raw_input_contents=[bytes(MAX_MESSAGE_BYTES + 1)])
    options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        infer = channel.unary_unary(MODEL_INFER, pb.ModelInferRequest.SerializeToString)
        with pytest.raises(grpc.RpcError) as err:
            infer(request, timeout=30)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    with GenserveClient(server.target, timeout=30) as client:
        assert client.generate(GAN, 1, seed=1).shape == (1, 28, 28, 1)


def _seed_request(seed: int, call_id: str) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="INT64", shape=[1, 1])
    raw = np.asarray([[seed]], dtype="<i8").tobytes()
    return pb.ModelInferRequest(model_name=GAN, id=call_id, inputs=[tensor], raw_input_contents=[raw])


def test_a_burst_of_concurrent_calls_is_answered_in_full_and_in_kind(server: ServerProcess):
    """200 calls at once on one connection (within the queue limit of 256): each gets its own
    answer, with its id and its seed's image."""
    seeds = list(range(200))
    with GenserveClient(server.target, timeout=60) as client:
        expected = {seed: client.generate(GAN, 1, seed=seed).tobytes() for seed in seeds[:20]}

    async def burst() -> list[pb.ModelInferResponse]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            infer = channel.unary_unary(
                MODEL_INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
            )
            return await asyncio.gather(*(infer(_seed_request(s, f"call-{s}"), timeout=120) for s in seeds))

    responses = asyncio.run(burst())
    assert [r.id for r in responses] == [f"call-{s}" for s in seeds]
    assert all(len(r.raw_output_contents[0]) == 28 * 28 for r in responses)
    for seed, image in expected.items():
        assert responses[seed].raw_output_contents[0] == image, seed


def test_a_client_cancel_frees_the_model_and_the_server_goes_on(server: ServerProcess):
    """A cancelled diffusion call (32 images x 1000 steps: half a minute of work here) leaves its
    model at the next step: its 32 pending rows drop to 0 within seconds, and the model serves again."""
    rows = 32
    request = pb.ModelInferRequest(
        model_name=DDPM,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="INT64", shape=[rows, 1]),
            pb.ModelInferRequest.InferInputTensor(name="STEPS", datatype="INT32", shape=[rows, 1]),
        ],
        raw_input_contents=[np.arange(rows, dtype="<i8").tobytes(), np.full(rows, 1000, "<i4").tobytes()],
    )
    with grpc.insecure_channel(server.target) as channel:
        future = channel.unary_unary(MODEL_INFER, pb.ModelInferRequest.SerializeToString).future(request, timeout=300)
        wait_for(lambda: metric(server, "genserve_pending_requests", DDPM) == rows)  # one per row
        future.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
        wait_for(lambda: metric(server, "genserve_pending_requests", DDPM) == 0, timeout=5.0)
    with GenserveClient(server.target, timeout=120) as client:
        assert client.generate(DDPM, 1, seed=2, steps=5).shape == (1, 28, 28, 1)
