"""Start the benchmark peers as child processes of the benchmark, each from its own environment
under ``.bench/`` (``benchmarks/peers/setup.sh``), and stop them again.

Every peer runs in a new session (its own process group), with its files (Ray's temp folder,
TorchServe's model store, logs, pid file and worker sockets) in a folder of the caller's, and
listens on free loopback ports: it never meets another Ray cluster or TorchServe on the machine,
and stopping it signals only the processes it started (its group), never anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent
BENCH = ROOT / ".bench"
MODELS = ROOT / "models"
PYTHON = {
    "triton": BENCH / "triton" / "bin" / "python",
    "ray": BENCH / "ray" / "bin" / "python",
    "torchserve": BENCH / "torchserve" / "bin" / "python",
}


# TorchServe's own log4j2.xml logs every request (access log, the worker's lines, DEBUG from the
# frontend): a deployment tuned for throughput logs warnings only, and so does the peer.
LOG4J2_WARN = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %c - %m%n"/></Console>
  </Appenders>
  <Loggers>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


class NotInstalled(RuntimeError):
    """A peer's environment is missing; the message says how to make it."""


def require(peer: str) -> Path:
    """The peer's Python, or NotInstalled naming the setup command."""
    python = PYTHON[peer]
    if not python.exists():
        raise NotInstalled(f"{peer} is not installed: run `bash benchmarks/peers/setup.sh {peer}` first")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerProcess:
    """A peer server as a child process, ready once its log shows ``ready_line``."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        ready_line: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_cmd: list[str] | None = None,
        timeout: float = 240.0,
        cleanup: list[Path] | None = None,
    ):
        self.name, self.port, self.env, self.cwd, self.stop_cmd = name, port, env, cwd, stop_cmd
        self.cleanup = cleanup or []  # folders of its own, removed once it has stopped
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
            start_new_session=True,  # its own process group: stop() reaches its children and nothing else
        )
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready_line, ready), daemon=True).start()
        started = time.monotonic()
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                self.stop()
                raise RuntimeError(f"{name} peer exited before serving:\n" + "".join(self.log[-40:]))

    def _drain(self, ready_line: str, ready: threading.Event) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            if ready_line in line:
                ready.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60.0) -> int | None:
        """The peer's own shutdown (``stop_cmd``, else SIGTERM), then SIGKILL to its process group
        if it is not gone within ``timeout``."""
        if self.proc.poll() is None:
            if self.stop_cmd:
                env = {**os.environ, **(self.env or {})}
                subprocess.run(self.stop_cmd, env=env, cwd=self.cwd, capture_output=True, timeout=timeout)
            else:
                self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        # What is left of the group it started (Ray's raylet and workers, TorchServe's workers).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        for folder in self.cleanup:
            shutil.rmtree(folder, ignore_errors=True)
        return code


def triton(models: list[str], max_batch_size: int, max_queue_delay_ms: float) -> PeerProcess:
    """``triton_server.py`` (pytriton) on free ports."""
    python = require("triton")
    libdir = (BENCH / "triton" / "libdir").read_text().strip()
    grpc, http, metrics = free_port(), free_port(), free_port()
    cmd = [
        str(python),
        str(PEERS / "triton_server.py"),
        *("--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)),
        *("--max-batch-size", str(max_batch_size), "--max-queue-delay-ms", str(max_queue_delay_ms)),
        *("--only", *models),
    ]
    return PeerProcess("triton", cmd, grpc, "triton serving", env={"LD_LIBRARY_PATH": libdir})


def ray(models: list[str], max_batch_size: int, batch_wait_ms: float, stubs: Path, workdir: Path) -> PeerProcess:
    """``ray_server.py``: its own local Ray cluster, temp folder under ``workdir``, on free ports."""
    python = require("ray")
    workdir.mkdir(parents=True, exist_ok=True)
    # Ray's sockets live under its temp folder and a Unix socket path has at most 107 bytes:
    # a short folder of its own, removed when the peer stops.
    temp = Path(tempfile.mkdtemp(prefix="gs-ray-"))
    grpc = free_port()
    cmd = [
        str(python),
        str(PEERS / "ray_server.py"),
        *("--stubs", str(stubs), "--temp-dir", str(temp)),
        *("--grpc-port", str(grpc), "--http-port", str(free_port())),
        *("--max-batch-size", str(max_batch_size), "--batch-wait-ms", str(batch_wait_ms)),
        *("--only", *models),
    ]
    # Ray's token authentication, with this cluster's own token: Ray would otherwise write one to
    # ~/.ray/auth_token, outside the run's folder.
    token = workdir / "ray-auth-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    return PeerProcess("ray", cmd, grpc, "ray serving", env=env, cwd=workdir, cleanup=[temp])


def torchserve_config(
    model: str, max_batch_size: int, max_batch_delay_ms: int, threads: int, models_dir: Path = MODELS
) -> dict:
    """The model config ``torch-model-archiver --config-file`` packs: TorchServe's batching and
    workers, and (``genserve``) the model folder and ONNX Runtime threads the handler reads."""
    return {
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": max_batch_size,
        "maxBatchDelay": max_batch_delay_ms,
        "responseTimeout": 600,
        "deviceType": "cpu",
        "genserve": {"folder": str((models_dir / model).resolve()), "threads": threads},
    }


def torchserve(models: list[str], max_batch_size: int, max_batch_delay_ms: int, workdir: Path) -> PeerProcess:
    """TorchServe (its Java frontend, one Python worker per model) with a model store, config,
    logs, pid file and worker sockets of its own under ``workdir``, on free ports."""
    python = require("torchserve")
    bin_dir = python.parent
    store = workdir / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    threads = os.cpu_count() or 1
    for model in models:
        config = workdir / f"{model}.yaml"
        # JSON is YAML: no YAML writer needed in the benchmark's environment.
        config.write_text(json.dumps(torchserve_config(model, max_batch_size, max_batch_delay_ms, threads)))
        subprocess.run(
            [
                str(bin_dir / "torch-model-archiver"),
                *("--model-name", model, "--version", "1.0"),
                *("--handler", str(PEERS / "torchserve_handler.py")),
                *("--extra-files", str(PEERS / "peer_models.py")),
                *("--config-file", str(config), "--export-path", str(store)),
                *("--archive-format", "no-archive", "--force"),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        )
    grpc = free_port()
    http = [free_port() for _ in range(3)]
    properties = {
        "inference_address": f"http://127.0.0.1:{http[0]}",
        "management_address": f"http://127.0.0.1:{http[1]}",
        "metrics_address": f"http://127.0.0.1:{http[2]}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": grpc,
        "grpc_management_port": free_port(),
        "model_store": store,
        "load_models": ",".join(models),
        "default_workers_per_model": 1,
        "job_queue_size": 1000,
        "disable_token_authorization": "true",
        # Worker sockets (/tmp/.ts.sock.<port> by default) go to the run's own folder.
        "vmargs": f"-Xmx1g -Djava.io.tmpdir={workdir}",
    }
    ts_config = workdir / "config.properties"
    ts_config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    log_config = workdir / "log4j2.xml"
    log_config.write_text(LOG4J2_WARN)
    # TorchServe's pid file is $TMPDIR/.model_server.pid: ours, so `torchserve --stop` stops this one.
    env = {"TMPDIR": str(workdir), "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG_LOCATION": str(workdir / "logs")}
    env["METRICS_LOCATION"] = env["LOG_LOCATION"]
    torchserve_bin = str(bin_dir / "torchserve")
    cmd = [torchserve_bin, "--start", "--foreground", "--ncs", "--disable-token-auth"]
    cmd += ["--ts-config", str(ts_config), "--model-store", str(store), "--log-config", str(log_config)]
    stop = [torchserve_bin, "--stop", "--foreground"]
    return PeerProcess("torchserve", cmd, grpc, "Model server started", env=env, cwd=workdir, stop_cmd=stop)
