"""The client library retries UNAVAILABLE (a replica draining or lost) through gRPC's retry policy,
and nothing else: against a real in-process gRPC server whose Generate fails as the test says."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from genserve.channel import RETRY_ATTEMPTS
from genserve.client import GenserveClient
from genserve.serving import convert
from genserve.serving.convert import ImageEncoding
from genserve.serving.pb import genserve_pb2_grpc


class FailingFirst(genserve_pb2_grpc.GenerationServiceServicer):
    """Generate fails with ``code`` on its first ``failures`` calls, then answers one image."""

    def __init__(self, code: grpc.StatusCode, failures: int):
        self.code, self.failures, self.calls = code, failures, 0

    def Generate(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.code, f"attempt {self.calls} fails")
        image = np.zeros((1, 28, 28, 1), np.uint8)
        return convert.generate_response_to_proto(request.model, image, ImageEncoding.RAW)


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(servicer: FailingFirst) -> str:
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
        genserve_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def test_unavailable_is_retried_until_an_attempt_succeeds(serve):
    servicer = FailingFirst(grpc.StatusCode.UNAVAILABLE, RETRY_ATTEMPTS - 1)
    with GenserveClient(serve(servicer), timeout=10) as client:
        assert client.generate("m", 1, seed=1).shape == (1, 28, 28, 1)
    assert servicer.calls == RETRY_ATTEMPTS


def test_retries_stop_after_the_policy_s_attempts(serve):
    servicer = FailingFirst(grpc.StatusCode.UNAVAILABLE, 100)
    with GenserveClient(serve(servicer), timeout=10) as client, pytest.raises(grpc.RpcError) as failed:
        client.generate("m", 1, seed=1)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == RETRY_ATTEMPTS


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT])
def test_other_statuses_are_not_retried(serve, code):
    servicer = FailingFirst(code, 1)
    with GenserveClient(serve(servicer), timeout=10) as client, pytest.raises(grpc.RpcError) as failed:
        client.generate("m", 1, seed=1)
    assert failed.value.code() is code and servicer.calls == 1
