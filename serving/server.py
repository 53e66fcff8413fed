"""The gRPC server: GenerationService, KServe v2 (``kserve``), grpc.health.v1 and reflection on one
``grpc.aio`` server.

Lifecycle: bind and start with health NOT_SERVING; load every model folder (any failure stops
the server with ``StartupError``, never half a repository); health SERVING; on SIGTERM or SIGINT
health goes NOT_SERVING, calls are still taken for ``drain_delay`` seconds (while balancers and
Kubernetes notice and stop sending), then new calls are refused and calls in flight get
``grace_period`` seconds to finish; then the transport sends GOAWAY and the process exits 0.
SIGHUP reloads the bearer tokens.

Security (``SecurityOptions``): TLS or mutual TLS on either transport, bearer tokens on every call
but health, reflection on or off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from genserve.serving import calls, convert, kserve, native
from genserve.serving.auth import TokenAuth, TokenFileError
from genserve.serving.config import ConfigError, ConnectionOptions, SecurityOptions, ServerConfig
from genserve.serving.engines import end_profiling, start_profiling
from genserve.serving.interceptors import Admission, CallGate, register, register_open
from genserve.serving.metrics import Metrics
from genserve.serving.pb import genserve_pb2_grpc
from genserve.serving.registry import ModelRegistry, load_repository
from genserve.serving.runner import ModelRunner
from genserve.serving.servicer import GenerationServicer
from genserve.serving.tracing import Tracer

__all__ = ["GenserveServer", "ServerConfig", "StartupError", "run", "serve"]

log = logging.getLogger(__name__)

# Services whose health follows the model repository: "" is the server as a whole.
HEALTH_SERVICES = ("", convert.SERVICE_NAME, kserve.SERVICE_NAME)
CORE_PENDING_CALLS = 20_000  # calls gRPC core may hold before the event loop takes them
# Headers one call may carry (gRPC's default is 8 KiB). gRPC C++ 1.51 (the native transport's, from
# Debian 12) closes the whole connection when a call passes it, failing the calls beside it; tokens,
# request ids and trace context fit far below this, and balancers cap headers near it anyway.
MAX_METADATA_BYTES = 64 * 1024


class StartupError(Exception):
    """The server could not bind its port or load its models; the message says which and why."""


class GenserveServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.port: int | None = None  # the bound port, once started
        self.metrics_port: int | None = None  # the bound Prometheus port, if any
        self.metrics = Metrics()
        self.registry = ModelRegistry()
        self.health = health.aio.HealthServicer()
        self.admission = Admission()  # the calls that run models: counted, and refused once draining
        self.auth: TokenAuth | None = None  # bearer tokens, when config.security.auth_token_file is set
        self.tracer: Tracer | None = None  # per-request traces, when config.trace is enabled
        # Engine calls, model loading and PNG encoding; concurrency is bounded by the per-model schedulers.
        self._executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="genserve-worker")
        self._server: grpc.aio.Server | None = None
        self._runners: dict[str, ModelRunner] = {}  # the loaded models, whose engine profiles stop flushes

    async def start(self) -> int:
        """Bind, start serving health and reflection (NOT_SERVING), and return the bound port."""
        security = self.config.security
        calls.configure_logging(self.config.log_format)
        if security.auth_token_file is not None:
            try:
                self.auth = TokenAuth(security.auth_token_file)
            except TokenFileError as exc:
                raise StartupError(str(exc)) from exc
        if self.config.trace.enabled:
            self.tracer = Tracer(self.config.trace)
        server = self._new_server()
        gate = CallGate(self.admission, self.metrics, self.auth, self.tracer)
        generation = GenerationServicer(self.registry, self._executor)
        register(
            server, genserve_pb2_grpc.add_GenerationServiceServicer_to_server, generation, gate, generation.WORK_METHODS
        )
        inference = kserve.InferenceServicer(self.registry, self.config, self.metrics, self.admission)
        register(server, kserve.add_to_server, inference, gate, inference.WORK_METHODS)
        register_open(server, health_pb2_grpc.add_HealthServicer_to_server, self.health)  # probes carry no token
        if security.reflection:
            names = [convert.SERVICE_NAME, kserve.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
            servicer = reflection.aio.ReflectionServicer(names)
            register(server, reflection_pb2_grpc.add_ServerReflectionServicer_to_server, servicer, gate)
        for service in HEALTH_SERVICES:
            await self.health.set(service, convert.health_status(serving=False))
        address = f"{self.config.host}:{self.config.port}"
        try:
            port = _bind(server, address, security)
        except (RuntimeError, OSError) as exc:
            raise StartupError(f"cannot listen on {address}: {exc}") from exc
        await server.start()
        self._server, self.port = server, port
        mode = "mutual TLS" if security.tls_client_ca else "TLS" if security.tls else "plain text"
        log.info("transport security: %s%s", mode, ", bearer tokens" if self.auth else "")
        log.info("listening on %s:%d", self.config.host, port)  # its last word is the port: tests parse it
        if self.config.metrics_port is not None:
            host = self.config.metrics_host or self.config.host
            try:
                self.metrics_port = self.metrics.serve_http(host, self.config.metrics_port)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {host}:{self.config.metrics_port}: {exc}") from exc
        return port

    def _new_server(self) -> grpc.aio.Server:
        """The gRPC server on the configured transport (``ServerConfig.frontend``); StartupError if
        ``native`` is asked for and not built."""
        limit, frontend = self.config.max_message_bytes, self.config.frontend
        connection = [*connection_args(self.config.connection), ("grpc.max_metadata_size", MAX_METADATA_BYTES)]
        if frontend != "grpcio" and native.available():
            log.info("gRPC transport: native (gRPC C++ %s, serving/native)", native.grpc_version())
            return native.NativeServer(limit, connection)
        if frontend == "native":
            raise StartupError(f"--frontend native: {native.unavailable_reason()}")
        why = "asked for" if frontend == "grpcio" else native.unavailable_reason()
        log.info("gRPC transport: grpcio %s (%s)", grpc.__version__, why)
        return grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 0),  # a port already in use is an error, not a silent second listener
                # gRPC core holds calls the event loop has not picked up yet, and past 1,000 of them it
                # starts cancelling new ones (CANCELLED, before any handler runs). A burst must reach the
                # model queues instead, whose bound rejects with a status that says what happened.
                ("grpc.server.max_pending_requests", CORE_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * CORE_PENDING_CALLS),
                *connection,
            ],
        )

    async def load_models(self) -> None:
        """Load every model folder, then report SERVING; StartupError if any folder fails or none exist."""
        models_dir, backend = self.config.models_dir, self.config.backend
        if not models_dir.is_dir():
            raise StartupError(
                f"no model repository at {models_dir}: pass --models DIR or set GENSERVE_MODELS "
                "(a genserve checkout's models/ folder holds the bundled models)"
            )
        log.info("loading models from %s with %s (%s)", models_dir, backend.value, self.config.engine)
        loop = asyncio.get_running_loop()
        try:
            runners = await loop.run_in_executor(
                self._executor, load_repository, models_dir, backend, self.config.settings_for, self.config.engine
            )
        except Exception as exc:
            raise StartupError(f"failed to load the models in {models_dir}: {exc}") from exc
        if not runners:
            raise StartupError(f"no model folders (subfolders with a manifest.json) in {models_dir}")
        try:
            check_settings(self.config, runners)
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc
        self.registry.add_runners(runners, self.config, self._executor, self.metrics)
        self._runners = runners
        if self.config.engine.engine_profile is not None:  # after the CUDA graphs' capture
            start_profiling(backend, self.config.engine.engine_profile)
        for service in HEALTH_SERVICES:
            await self.health.set(service, convert.health_status(serving=True))
        log.info("serving %d models: %s", len(runners), ", ".join(sorted(runners)))

    def reload_tokens(self) -> None:
        """Re-read the bearer tokens (SIGHUP); a no-op without ``--auth-token-file``."""
        if self.auth is not None:
            self.auth.reload()

    async def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        """NOT_SERVING; go on taking calls for ``drain_delay`` seconds; then refuse new calls, give
        calls in flight ``grace`` seconds, and cancel the rest.

        The delay is for balancers: they learn of NOT_SERVING at their next health check (and
        Kubernetes removes an endpoint on its own clock), and a call they send meanwhile must not
        fail. New calls are then refused in-process (``Admission``: UNAVAILABLE, which clients
        retry) while the calls in flight finish, and the transport stops after them: a call that
        raced gRPC core's own shutdown would be cancelled (CANCELLED, which they do not retry)."""
        grace = self.config.grace_period if grace is None else grace
        self.admission.draining = True
        await self.health.enter_graceful_shutdown()
        if drain_delay > 0 and self._server is not None:
            log.info("NOT_SERVING; taking calls %.1f s more while balancers stop sending", drain_delay)
            await asyncio.sleep(drain_delay)
        end = time.monotonic() + grace
        self.admission.close()
        if self._server is not None:
            log.info("draining: %d model calls in flight, %.1f s to finish", self.admission.in_flight, grace)
            if await self.admission.wait_idle(grace):
                log.info("drained: no call in flight")
            else:
                log.warning("grace period over: cancelling %d calls in flight", self.admission.in_flight)
            await self._server.stop(max(0.0, end - time.monotonic()))  # what else is open: health watches, reflection
            log.info("stopped")
        for scheduler in self.registry.schedulers().values():
            await scheduler.close()
        if self.config.engine.engine_profile is not None:
            end_profiling(engine for runner in self._runners.values() for engine in runner.engines)
        self.metrics.close()
        if self.tracer is not None:
            self.tracer.close()
        # Calls cut at the end of the grace period stop at their next engine call; the interpreter
        # joins these threads at exit.
        self._executor.shutdown(wait=False, cancel_futures=True)


def connection_args(options: ConnectionOptions) -> list[tuple[str, int]]:
    """gRPC channel arguments for ``options``, the same on both transports."""
    names = {
        "max_connection_age": "grpc.max_connection_age_ms",
        "max_connection_age_grace": "grpc.max_connection_age_grace_ms",
        "keepalive_time": "grpc.keepalive_time_ms",
        "keepalive_timeout": "grpc.keepalive_timeout_ms",
    }
    values = {field: getattr(options, field) for field in names}
    return [(names[field], round(value * 1000)) for field, value in values.items() if value is not None]


def _bind(server: grpc.aio.Server, address: str, security: SecurityOptions) -> int:
    """Listen on ``address``: plain text, TLS, or mutual TLS; the bound port."""
    if not security.tls:
        return server.add_insecure_port(address)
    key, chain = security.tls_key.read_bytes(), security.tls_cert.read_bytes()
    client_ca = security.tls_client_ca.read_bytes() if security.tls_client_ca else None
    if isinstance(server, native.NativeServer):
        return server.add_tls_port(address, key, chain, client_ca)
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    return server.add_secure_port(address, credentials)


def check_settings(config: ServerConfig, runners: dict[str, ModelRunner]) -> None:
    """The settings checks that need the loaded models: sections naming no served model, batch
    sizes beyond an engine's limit. Raises ConfigError listing every problem."""
    problems = [
        f"models.{name}: no such model in {config.models_dir}; served models: {', '.join(sorted(runners))}"
        for name in sorted(set(config.models) - set(runners))
    ]
    for name, runner in sorted(runners.items()):
        settings, key = config.settings_for(name), config.key_of(name, "max_batch_size")
        problems += settings.check_engine_limit(runner.engines[0].max_batch_size, name, key)
    if problems:
        raise ConfigError(problems, "model settings")


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
    loop.add_signal_handler(signal.SIGHUP, server.reload_tokens)
    drain_delay = 0.0  # until it serves: not serving yet, nothing to drain
    try:
        await server.start()
        loading = asyncio.ensure_future(server.load_models())
        stop_requested = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({loading, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # raises StartupError
            await stop_requested
            drain_delay = config.drain_delay  # it served: balancers must learn it stops
        else:
            loading.cancel()  # the process exits once the folder being loaded is done
    finally:
        await server.stop(drain_delay=drain_delay)
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def run(config: ServerConfig) -> None:
    asyncio.run(serve(config))
