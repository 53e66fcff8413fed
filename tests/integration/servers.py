"""Real ``genserve serve`` processes on loopback ports, and real clients."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from genserve.client import Credentials, GenserveClient
from genserve.serving import native

GENSERVE = Path(sys.executable).parent / "genserve"  # the console script of this virtualenv
START_TIMEOUT = 60.0
# The gRPC transports (``serve --frontend``): tests that take the ``server`` or ``frontend`` fixture
# run on each. ``start_server`` without ``--frontend`` gets the default (native when built).
# Where GENSERVE_REQUIRE_NATIVE is set (CI), a missing native transport fails instead of skipping.
if os.environ.get("GENSERVE_REQUIRE_NATIVE") and not native.available():
    raise pytest.UsageError(f"GENSERVE_REQUIRE_NATIVE is set but {native.unavailable_reason()}")
TRANSPORTS = (
    pytest.param(
        "native",
        marks=pytest.mark.skipif(not native.available(), reason=native.unavailable_reason()),
    ),
    "grpcio",
)


class ServerProcess:
    """``genserve serve --port 0`` in a subprocess; its log is collected line by line from stderr."""

    def __init__(
        self,
        models: Path | None,
        *args: str,
        verbose: bool = False,
        metrics: bool = False,
        command: Path = GENSERVE,
        **popen,
    ):
        """``models`` None: no ``--models`` (the command's default); ``command``: another install's
        genserve; ``popen``: ``cwd``, ``env``, ... of the process."""
        cmd = [str(command), *(["-v"] if verbose else []), "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += [*(["--models", str(models)] if models else []), *(["--metrics-port", "0"] if metrics else []), *args]
        self.metrics = metrics
        self.metrics_port: int | None = None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
        self.lines: list[str] = []
        self.port: int | None = None
        self._eof = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    @property
    def target(self) -> str:
        assert self.port is not None, "not listening yet"
        return f"127.0.0.1:{self.port}"

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """The first log line matching ``pattern``, waiting for it; fails if the process exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    what = "exited" if self._eof else f"did not log it within {timeout} s"
                    pytest.fail(f"server {what} before logging {pattern!r}; log:\n{''.join(self.lines)}")
                self._changed.wait(remaining)

    def wait_until_listening(self) -> ServerProcess:
        self.port = int(self.wait_for_line(r'listening on [^\s"]+:(\d+)(?:"|$)').group(1))
        if self.metrics:
            self.metrics_port = int(self.wait_for_line(r"metrics on http://[^\s/]+:(\d+)/metrics").group(1))
        return self

    def scrape_metrics(self) -> str:
        """The Prometheus text exposition, as a scraper would fetch it."""
        assert self.metrics_port is not None, "started without metrics=True"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return response.read().decode()

    def wait_until_serving(
        self, timeout: float = START_TIMEOUT, credentials: Credentials | None = None
    ) -> ServerProcess:
        """``credentials``: what the health check connects with (TLS; health needs no token)."""
        self.wait_until_listening()
        with GenserveClient(self.target, credentials=credentials) as client:
            client.wait_until_serving(timeout)
        return self

    def wait(self, timeout: float) -> int:
        """Exit code; the log is complete once this returns."""
        code = self.proc.wait(timeout)
        with self._changed:
            self._changed.wait_for(lambda: self._eof, timeout=5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_server(tiny_models: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory of servers (on ``tiny_models`` unless ``models=`` is given), all stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, models: Path | None = None, verbose: bool = False, metrics: bool = False) -> ServerProcess:
        server = ServerProcess(models or tiny_models, *args, verbose=verbose, metrics=metrics)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=TRANSPORTS)
def frontend(request: pytest.FixtureRequest) -> str:
    """Each gRPC transport in turn, for ``start_server("--frontend", frontend)``."""
    return request.param


@pytest.fixture(scope="session", params=TRANSPORTS)
def server(request: pytest.FixtureRequest, tiny_models: Path) -> Iterator[ServerProcess]:
    """One server on the tiny models shared by the tests that only make calls, on each transport."""
    process = ServerProcess(tiny_models, "--frontend", request.param, metrics=True)
    try:
        yield process.wait_until_serving()
    finally:
        process.stop()


@pytest.fixture(scope="session")
def genserve() -> Callable[..., subprocess.CompletedProcess]:
    """``genserve(*args, timeout=300)``: this virtualenv's real command line, run to completion."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(GENSERVE), *args], capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def client(server: ServerProcess) -> Iterator[GenserveClient]:
    with GenserveClient(server.target, timeout=60) as c:
        yield c
