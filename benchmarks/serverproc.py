"""Start ``genserve serve`` as a real process and wait for grpc.health.v1 to say SERVING."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.channel import Credentials, open_channel

GENSERVE = Path(sys.executable).with_name("genserve")
LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    started_at: float  # time.monotonic() just before the process was spawned
    serving_after: float  # seconds from spawn to health SERVING

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def _drain(stream) -> None:
    for _ in stream:
        pass


def start_server(
    *args: str, timeout: float = 120.0, tls_ca: Path | None = None, command: Sequence[str] | None = None
) -> ServerProcess:
    """Spawn ``genserve serve --port 0 ARGS``; return once the overall health is SERVING.
    ``tls_ca``: the server serves TLS with a certificate of this CA; ``command``: what runs
    ``genserve`` (default this virtualenv's console script)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [*(command or [str(GENSERVE)]), "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    port = None
    lines = []
    while port is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server exited before listening:\n" + "".join(lines))
        lines.append(line)
        if m := LISTENING.search(line):
            port = int(m.group(2))
        if time.monotonic() - started > timeout:
            proc.kill()
            raise TimeoutError("server did not listen in time:\n" + "".join(lines))
    # Keep draining the server's output so it never blocks on a full pipe.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    with open_channel(f"127.0.0.1:{port}", Credentials(tls_ca=tls_ca) if tls_ca else None) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() - started > timeout or proc.poll() is not None:
                proc.kill()
                raise TimeoutError("server never reported SERVING")
            time.sleep(0.02)
    return ServerProcess(proc, port, started, time.monotonic() - started)
