"""The gRPC server: GenerationService, grpc.health.v1 and reflection on one ``grpc.aio`` server.

Lifecycle: bind and start with health NOT_SERVING; load every model folder (any failure stops
the server with ``StartupError``, never half a repository); health SERVING; on SIGTERM or SIGINT
health goes NOT_SERVING, new calls are refused, and calls in flight get ``grace_period`` seconds
to finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from genserve.serving import convert
from genserve.serving.engines import Backend
from genserve.serving.interceptors import ErrorInterceptor
from genserve.serving.pb import genserve_pb2_grpc
from genserve.serving.runner import load_repository
from genserve.serving.servicer import GenerationServicer, ModelRegistry

log = logging.getLogger(__name__)

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 50051
DEFAULT_GRACE_PERIOD = 10.0
# Services whose health follows the model repository: "" is the server as a whole.
HEALTH_SERVICES = ("", convert.SERVICE_NAME)


class StartupError(Exception):
    """The server could not bind its port or load its models; the message says which and why."""


@dataclass(frozen=True)
class ServerConfig:
    models_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 = an ephemeral port, see GenserveServer.port
    backend: Backend = Backend.ONNXRUNTIME
    grace_period: float = DEFAULT_GRACE_PERIOD  # seconds calls in flight get to finish at shutdown
    max_message_bytes: int = convert.MAX_MESSAGE_BYTES


class GenserveServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.port: int | None = None  # the bound port, once started
        self.registry = ModelRegistry()
        self.health = health.aio.HealthServicer()
        # Engine calls, model loading and PNG encoding; concurrency is bounded by the per-model schedulers.
        self._executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="genserve-worker")
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind, start serving health and reflection (NOT_SERVING), and return the bound port."""
        limit = self.config.max_message_bytes
        server = grpc.aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 0),  # a port already in use is an error, not a silent second listener
            ],
        )
        genserve_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(self.registry, self._executor), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [convert.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        for service in HEALTH_SERVICES:
            await self.health.set(service, convert.health_status(serving=False))
        address = f"{self.config.host}:{self.config.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {address}: {exc}") from exc
        await server.start()
        self._server, self.port = server, port
        log.info("listening on %s:%d", self.config.host, port)
        return port

    async def load_models(self) -> None:
        """Load every model folder, then report SERVING; StartupError if any folder fails or none exist."""
        models_dir, backend = self.config.models_dir, self.config.backend
        log.info("loading models from %s with %s", models_dir, backend.value)
        loop = asyncio.get_running_loop()
        try:
            runners = await loop.run_in_executor(self._executor, load_repository, models_dir, backend)
        except Exception as exc:
            raise StartupError(f"failed to load the models in {models_dir}: {exc}") from exc
        if not runners:
            raise StartupError(f"no model folders (subfolders with a manifest.json) in {models_dir}")
        self.registry.add_runners(runners, self._executor)
        for service in HEALTH_SERVICES:
            await self.health.set(service, convert.health_status(serving=True))
        log.info("serving %d models: %s", len(runners), ", ".join(sorted(runners)))

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, give calls in flight ``grace`` seconds, then cancel them."""
        grace = self.config.grace_period if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            log.info("draining: calls in flight have %.1f s to finish", grace)
            await self._server.stop(grace)
            log.info("stopped")
        # Calls cut at the end of the grace period stop at their next engine call; the interpreter
        # joins these threads at exit.
        self._executor.shutdown(wait=False, cancel_futures=True)


async def serve(config: ServerConfig) -> None:
    """Run a server until SIGTERM or SIGINT, then drain it. Raises StartupError."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s", sig.name)
        stopping.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    server = GenserveServer(config)
    try:
        await server.start()
        loading = asyncio.ensure_future(server.load_models())
        stop_requested = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({loading, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # raises StartupError
            await stop_requested
        else:
            loading.cancel()  # the process exits once the folder being loaded is done
    finally:
        await server.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(config: ServerConfig) -> None:
    asyncio.run(serve(config))
