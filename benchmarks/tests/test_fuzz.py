"""Mutated and random messages to every RPC, on each gRPC transport (``benchmarks/fuzz.py``, a
smaller seeded run): no call ends INTERNAL or UNKNOWN or stalls, health answers throughout, and
valid requests still succeed afterwards on a live server."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from benchmarks import fuzz
from tests.integration.servers import TRANSPORTS

MESSAGES, SEED = 1500, 0

# The native transport (gRPC C++ 1.51) tears the whole HTTP/2 connection down when one call's
# headers pass its metadata limit (server.MAX_METADATA_BYTES, 64 KiB): the calls in flight beside it
# end RESOURCE_EXHAUSTED "received initial metadata size exceeds limit" or UNAVAILABLE "Socket
# closed". grpcio's core refuses that call alone. Fixed by a newer gRPC C++ than Debian 12's.
OVERSIZED_HEADERS = "native: a call's oversized headers fail the other calls on its connection"
PINNED_ELSEWHERE = ("details", "connection")  # failure kinds with a test of their own, below


@pytest.fixture(scope="module", params=TRANSPORTS)
def fuzzed(request: pytest.FixtureRequest, tiny_models: Path) -> Iterator[tuple[str, fuzz.Report]]:
    """One seeded fuzz run per transport, on a server of its own; the report, with the process and
    its log checked afterwards."""
    server = fuzz.start_server(tiny_models, request.param)
    try:
        report = fuzz.fuzz(server.target, MESSAGES, SEED, workers=3, transport=request.param)
        report.after["process_alive"] = server.proc.poll() is None
        report.tracebacks = fuzz.tracebacks(server.log)
    finally:
        server.stop()
    yield request.param, report


def test_every_method_is_fuzzed(fuzzed):
    _, report = fuzzed
    assert set(report.counts) == {m.name for m in fuzz.all_methods()}
    assert sum(sum(c.values()) for c in report.counts.values()) == MESSAGES


def _described(failures: list[dict]) -> str:
    return "\n".join(
        f"case {f['case']} {f['method']} {f['origin']}: {f['why']} ({f['details'][:200]})" for f in failures
    )


def test_no_parseable_request_ends_internal_or_unknown_or_stalls(fuzzed):
    _, report = fuzzed
    failures = [f for f in report.failures if f["parseable"] and f["kind"] not in PINNED_ELSEWHERE]
    assert not failures, _described(failures)


def test_every_error_reaches_the_client_with_its_own_status(fuzzed):
    _, report = fuzzed
    failures = [f for f in report.failures if f["kind"] == "details"]
    assert not failures, _described(failures)


def test_requests_that_do_not_parse_are_invalid_argument_and_never_stall(fuzzed):
    _, report = fuzzed
    assert report.unparseable.get("INVALID_ARGUMENT", 0) > 100  # the fuzzer does send many
    # UNIMPLEMENTED: a method the server does not implement; RESOURCE_EXHAUSTED: over the size limit
    assert set(report.unparseable) <= {"INVALID_ARGUMENT", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED"}
    failures = [f for f in report.failures if not f["parseable"] and f["kind"] not in PINNED_ELSEWHERE]
    assert not failures, _described(failures)


def test_health_answers_throughout_and_valid_requests_succeed_after(fuzzed):
    _, report = fuzzed
    assert report.health["probes"] > 0 and not report.health["failed"]
    assert report.after == {"generate": "OK", "model_infer": "OK", "health": "OK", "process_alive": True}


def test_the_server_log_has_no_traceback(fuzzed):
    _, report = fuzzed
    assert not report.tracebacks, report.tracebacks[0]


def test_a_call_whose_headers_pass_the_limit_fails_alone(tiny_models: Path, frontend: str, request):
    if frontend == "native":
        request.applymarker(pytest.mark.xfail(strict=True, reason=OVERSIZED_HEADERS))
    server = fuzz.start_server(tiny_models, frontend)
    try:
        with grpc.insecure_channel(server.target) as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")

            def call(i: int) -> tuple[bool, str]:
                oversized = i % 10 == 0  # 93 kB of headers once base64-encoded, over the 64 KiB limit
                try:
                    live(b"", timeout=10, metadata=(("x-fuzz-bin", bytes(70_000)),) if oversized else ())
                except grpc.RpcError as exc:
                    return oversized, exc.code().name
                return oversized, "OK"

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                outcomes = Counter(pool.map(call, range(600)))
    finally:
        server.stop()
    assert {code for oversized, code in outcomes if not oversized} == {"OK"}, outcomes
    assert {code for oversized, code in outcomes if oversized} <= {"RESOURCE_EXHAUSTED", "OK"}, outcomes
