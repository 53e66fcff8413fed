"""TLS, mutual TLS and bearer tokens on both transports, request ids and JSON access logs: real
servers on loopback, certificates made at test time by a throwaway CA."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as kserve_pb
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from deploy.certs import Pki, make_pki
from genserve.channel import Credentials, open_channel
from genserve.client import GenserveClient
from genserve.serving import convert
from genserve.serving.domain import GenerateRequest
from genserve.serving.pb import genserve_pb2_grpc

GAN = "dcgan-tiny"
TOKENS = ("first-token", "second-token")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _status_of(credentials: Credentials, target: str, **kwargs) -> grpc.StatusCode:
    """The status of one small Generate with ``credentials`` (OK when it succeeds)."""
    with GenserveClient(target, timeout=10, credentials=credentials) as client:
        try:
            assert client.generate(GAN, 1, seed=1, **kwargs).shape == (1, 28, 28, 1)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_tls_serves_clients_that_trust_its_ca_and_no_one_else(start_server, frontend, pki: Pki):
    server = start_server("--frontend", frontend, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    trusted = Credentials(tls_ca=pki.ca)
    server.wait_until_serving(credentials=trusted)
    assert _status_of(trusted, server.target) is grpc.StatusCode.OK
    localhost = f"localhost:{server.port}"
    assert _status_of(trusted, localhost) is grpc.StatusCode.OK
    assert _status_of(Credentials(), server.target) is grpc.StatusCode.UNAVAILABLE  # plain text to a TLS port
    assert _status_of(Credentials(tls_ca=pki.rogue_ca), server.target) is grpc.StatusCode.UNAVAILABLE  # wrong CA
    assert _status_of(Credentials(tls=True), server.target) is grpc.StatusCode.UNAVAILABLE  # not in the system's CAs
    assert "transport security: TLS" in server.log


def test_an_expired_server_certificate_is_refused_by_clients(start_server, frontend, pki: Pki):
    server = start_server("--frontend", frontend, "--tls-cert", str(pki.expired_cert), "--tls-key", str(pki.server_key))
    server.wait_until_listening()
    assert _status_of(Credentials(tls_ca=pki.ca), server.target) is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(start_server, frontend, pki: Pki):
    server = start_server(
        "--frontend",
        frontend,
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)),
    )
    good = Credentials(tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
    server.wait_until_serving(credentials=good)
    assert _status_of(good, server.target) is grpc.StatusCode.OK
    assert _status_of(Credentials(tls_ca=pki.ca), server.target) is grpc.StatusCode.UNAVAILABLE  # no certificate
    rogue = Credentials(tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key)
    assert _status_of(rogue, server.target) is grpc.StatusCode.UNAVAILABLE  # a certificate of another CA
    assert "transport security: mutual TLS" in server.log


def test_tokens_guard_every_call_but_health_and_reload_on_sighup(start_server, frontend, tmp_path: Path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# two tokens, so that they can be rotated\n{TOKENS[0]}\n\n{TOKENS[1]}\n")
    server = start_server("--frontend", frontend, "--auth-token-file", str(tokens))
    server.wait_until_serving()  # health is open to all: probes carry no token
    assert _status_of(Credentials(), server.target) is grpc.StatusCode.UNAUTHENTICATED
    assert _status_of(Credentials(token="wrong"), server.target) is grpc.StatusCode.UNAUTHENTICATED
    for token in TOKENS:
        assert _status_of(Credentials(token=token), server.target) is grpc.StatusCode.OK

    with open_channel(server.target) as channel:  # no token
        with pytest.raises(grpc.RpcError) as refused:
            kserve_grpc.GRPCInferenceServiceStub(channel).ServerLive(kserve_pb.ServerLiveRequest(), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in refused.value.details()
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    with triton.InferenceServerClient(server.target) as kserve:  # Triton's client sends the header as given
        seeds = triton.InferInput("SEED", [1, 1], "INT64")
        seeds.set_data_from_numpy(np.array([[7]], dtype=np.int64))
        result = kserve.infer(GAN, [seeds], headers={"authorization": f"Bearer {TOKENS[1]}"})
        assert result.as_numpy("IMAGE").shape[0] == 1

    tokens.write_text("third-token\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_line("bearer tokens reloaded: 1")
    assert _status_of(Credentials(token=TOKENS[0]), server.target) is grpc.StatusCode.UNAUTHENTICATED
    assert _status_of(Credentials(token="third-token"), server.target) is grpc.StatusCode.OK
    tokens.write_text("# every token removed by mistake\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_line("token reload failed, keeping the 1 tokens in use")
    assert _status_of(Credentials(token="third-token"), server.target) is grpc.StatusCode.OK


def test_reflection_can_be_switched_off(start_server, frontend):
    server = start_server("--frontend", frontend, "--reflection", "off").wait_until_serving()
    with open_channel(server.target) as channel, pytest.raises(grpc.RpcError) as missing:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert missing.value.code() is grpc.StatusCode.UNIMPLEMENTED


def _json_lines(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_request_ids_come_back_and_json_logs_have_a_line_per_call_on_both_apis(start_server, frontend):
    server = start_server("--frontend", frontend, "--log-format", "json", metrics=True).wait_until_serving()
    with open_channel(server.target) as channel:
        stub = genserve_pb2_grpc.GenerationServiceStub(channel)
        request = convert.generate_request_to_proto(GenerateRequest(GAN, 2, seed=5))
        _, call = stub.Generate.with_call(request, timeout=10, metadata=[("x-request-id", "req-from-balancer-1")])
        assert dict(call.trailing_metadata())["x-request-id"] == "req-from-balancer-1"
        _, call = stub.Generate.with_call(request, timeout=10)
        generated = dict(call.trailing_metadata())["x-request-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0  # a fresh uuid4, hex
        with pytest.raises(grpc.RpcError) as missing:
            stub.Generate(
                convert.generate_request_to_proto(GenerateRequest("no-such-model", 1)),
                metadata=[("x-request-id", "req-404")],
            )
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        assert dict(missing.value.trailing_metadata())["x-request-id"] == "req-404"
    with triton.InferenceServerClient(server.target) as kserve:
        seeds = triton.InferInput("SEED", [3, 1], "INT64")
        seeds.set_data_from_numpy(np.array([[1], [2], [3]], dtype=np.int64))
        kserve.infer(GAN, [seeds], headers={"x-request-id": "req-kserve"})

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "req-kserve" not in server.log:
        time.sleep(0.05)
    lines = _json_lines(server.log)
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    calls = {line["request_id"]: line for line in lines if line["logger"] == "genserve.access"}
    first = calls["req-from-balancer-1"]
    assert first["method"] == "/genserve.v1.GenerationService/Generate"
    assert (first["model"], first["status"], first["images"]) == (GAN, "OK", 2)
    assert first["latency_ms"] > 0 and "127.0.0.1" in first["peer"]
    assert calls[generated]["status"] == "OK"
    assert calls["req-404"]["status"] == "NOT_FOUND"
    rejected = [line for line in lines if line.get("request_id") == "req-404" and line["logger"] != "genserve.access"]
    assert rejected and "no-such-model" in rejected[0]["message"]  # the rejection's own line carries the id too
    infer = calls["req-kserve"]
    assert (infer["method"], infer["model"], infer["images"]) == ("/inference.GRPCInferenceService/ModelInfer", GAN, 3)

    metrics = server.scrape_metrics()  # KServe calls count in the same request metrics as genserve's own
    assert f'genserve_requests_total{{code="OK",model="{GAN}"}} 3.0' in metrics
    assert f'genserve_request_duration_seconds_count{{model="{GAN}"}} 3.0' in metrics
