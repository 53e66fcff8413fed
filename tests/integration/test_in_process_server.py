"""The server's pieces in this process on a loopback port: start-up health and the error mapping."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from genserve.serving import convert, errors
from genserve.serving.domain import GenerateRequest
from genserve.serving.interceptors import with_error_statuses
from genserve.serving.pb import genserve_pb2_grpc
from genserve.serving.server import GenserveServer, ServerConfig


def test_health_is_not_serving_and_generate_unavailable_until_every_model_is_loaded(tiny_models: Path):
    async def scenario() -> None:
        server = GenserveServer(ServerConfig(models_dir=tiny_models, host="127.0.0.1", port=0))
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                generation = genserve_pb2_grpc.GenerationServiceStub(channel)
                request = convert.generate_request_to_proto(GenerateRequest("dcgan-tiny", 1))

                async def status(service: str) -> str:
                    return convert.health_status_name(await health.Check(convert.health_check_request(service)))

                assert await status("") == await status(convert.SERVICE_NAME) == "NOT_SERVING"
                with pytest.raises(grpc.aio.AioRpcError) as loading:
                    await generation.Generate(request)
                assert loading.value.code() is grpc.StatusCode.UNAVAILABLE

                await server.load_models()
                assert await status("") == await status(convert.SERVICE_NAME) == "SERVING"
                response = await generation.Generate(request)
                assert len(response.images) == 1
        finally:
            await server.stop(grace=0)

    asyncio.run(scenario())


class RaisingServicer(genserve_pb2_grpc.GenerationServiceServicer):
    """Raises whatever it is given, to exercise the error mapping (the thing under test)."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    async def Generate(self, request, context):
        raise self.exc

    async def ListModels(self, request, context):
        raise self.exc


def call_raising_server(exc: BaseException) -> grpc.aio.AioRpcError:
    async def scenario() -> grpc.aio.AioRpcError:
        server = grpc.aio.server()
        servicer = with_error_statuses(RaisingServicer(exc), convert.SERVICE_DESCRIPTOR)
        genserve_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = genserve_pb2_grpc.GenerationServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ListModels(convert.list_models_request())
                return info.value
        finally:
            await server.stop(grace=0)

    return asyncio.run(scenario())


@pytest.mark.parametrize("error_type", sorted(errors.STATUS, key=lambda t: t.__name__))
def test_each_domain_error_leaves_with_its_status_and_message(error_type):
    err = call_raising_server(error_type("what went wrong and what is allowed"))
    assert err.code().name == errors.STATUS[error_type]
    assert err.details() == "what went wrong and what is allowed"


def test_an_unexpected_exception_is_internal_with_a_logged_traceback_and_no_details(caplog):
    with caplog.at_level(logging.ERROR, logger="genserve.serving.interceptors"):
        err = call_raising_server(KeyError("/secret/path"))
    assert err.code() is grpc.StatusCode.INTERNAL
    assert "/secret/path" not in err.details()
    assert "KeyError" in err.details()
    (record,) = [r for r in caplog.records if r.name == "genserve.serving.interceptors"]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
