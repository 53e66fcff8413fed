"""What every RPC of genserve's services passes through, wrapped once at registration
(``register``): errors mapped to gRPC statuses (after TGI's ExceptionInterceptor), bearer tokens
checked (``auth``), a request id and a record of the call (``calls``: metrics and access log), the
calls that run models counted for the drain at shutdown (``Admission``), and requests that are not
valid protobuf answered INVALID_ARGUMENT instead of gRPC's own INTERNAL.

A ``ServingError`` becomes its status from ``errors.STATUS`` with its message; anything else is a
bug: INTERNAL with a generic message for the client and the traceback in the log. Servicers just
raise domain errors and never touch status codes.

The wrapping is done once, when a servicer is registered (``with_error_statuses``), not by a
``grpc.aio.ServerInterceptor``: an interceptor runs as Python coroutines on every call and
rebuilds the method handler each time, on the event loop, the server's bottleneck on small
requests (perf_analyzer on dcgan-mnist at concurrency 16: 942 -> 1,023 req/s, means of 2 and 3
runs that each vary by about 10%).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from genserve.serving import calls
from genserve.serving.auth import TokenAuth
from genserve.serving.errors import InvalidArgument, ServingError, Unavailable, status_name
from genserve.serving.metrics import Metrics
from genserve.serving.tracing import Tracer

log = logging.getLogger(__name__)


MAX_DETAILS_BYTES = 1000  # of an error's message: it may quote what the client sent (a model name,
# a shape), and gRPC's 8 KiB metadata limit on the client must leave it the status


def _capped(message: str) -> str:
    data = message.encode()
    if len(data) <= MAX_DETAILS_BYTES:
        return message
    return f"{data[:MAX_DETAILS_BYTES].decode(errors='ignore')}... ({len(data)} bytes)"


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """Abort the call with the status that ``exc`` maps to (never returns)."""
    if isinstance(exc, ServingError):
        code = grpc.StatusCode[status_name(exc)]
        details = _capped(str(exc))
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", method, details, exc_info=exc)
        else:
            log.info("%s rejected: %s %s", method, code.name, details)
        await context.abort(code, details)
    log.error("%s failed with an unexpected %s", method, type(exc).__name__, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")


class Admission:
    """The calls that run models (``with_error_statuses(..., admitted=...)``): counted while they
    run and, once ``close`` is called, refused with UNAVAILABLE.

    The server drains here, in-process, before it stops its transport: gRPC core cancels a call
    that reaches it just as its own shutdown starts (CANCELLED, which clients and proxies do not
    retry), whereas a call refused here gets UNAVAILABLE, which they retry on another replica.
    Other calls (health, readiness, metadata, reflection) are neither counted nor refused: probes
    keep their answers while the server drains, and a health Watch never ends by itself."""

    def __init__(self) -> None:
        self.open = True
        self.draining = False  # NOT_SERVING announced (the drain delay), calls still taken
        self.in_flight = 0
        self._idle: asyncio.Event | None = None  # set when the last call in flight ends

    def check(self) -> None:
        """Unavailable once closed."""
        if not self.open:
            raise Unavailable("the server is shutting down and takes no new work; retry on another replica")

    def __enter__(self) -> None:
        self.check()
        self.in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    @property
    def ready(self) -> bool:
        """Taking calls, and not about to stop (what readiness probes answer)."""
        return self.open and not self.draining

    def close(self) -> None:
        """Refuse every call from now on (the calls in flight go on)."""
        self.open = False
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the calls in flight to end; True if they all have."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Unparseable:
    """What a request deserializer returns for bytes that are not its message (see ``register``)."""

    __slots__ = ("error",)

    def __init__(self, error: str):
        self.error = error


def _never_raising(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize`` returning ``Unparseable`` instead of raising: gRPC answers a deserializer's
    exception with INTERNAL ("Exception deserializing request!"), but garbage from a client is the
    client's error, INVALID_ARGUMENT, with the parser's reason."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return Unparseable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    return parse


def _parsed(request: Any) -> Any:
    if type(request) is Unparseable:
        raise InvalidArgument(f"the request is not a valid protobuf message of this method ({request.error})")
    return request


async def _parsed_stream(requests: Any) -> Any:
    async for request in requests:
        yield _parsed(request)


class CallGate:
    """The per-server part of every call: admission (for the methods that run models), the bearer
    tokens (None = no authentication) and the metrics the calls are counted in."""

    def __init__(
        self,
        admission: Admission,
        metrics: Metrics | None = None,
        auth: TokenAuth | None = None,
        tracer: Tracer | None = None,
    ):
        self.admission = admission
        self.metrics = metrics
        self.auth = auth
        self.tracer = tracer

    def enter(self, context: grpc.aio.ServicerContext, method: str) -> tuple[calls.CallRecord, Any]:
        metadata = context.invocation_metadata() or ()
        record, token = calls.begin(method, metadata, context.peer())
        context.set_trailing_metadata(((calls.REQUEST_ID, record.request_id),))
        if self.tracer is not None:
            record.trace = self.tracer.start(metadata)
            if record.trace is not None:
                record.start_ns = time.time_ns()
        return record, token

    def check(self, context: grpc.aio.ServicerContext) -> None:
        if self.auth is not None:
            self.auth.check(context.invocation_metadata() or ())

    def leave(self, record: calls.CallRecord, token: Any, counted: bool, context: grpc.aio.ServicerContext) -> None:
        if counted and self.metrics is not None:
            self.metrics.count_request(record.model, record.code)
            if record.code == "OK":
                self.metrics.for_model(record.model).request_seconds.observe(record.seconds)
        calls.end(record, token)
        if record.trace is not None:  # the span ends when the transport has sent the answer
            returned = time.time_ns()
            context.add_done_callback(lambda _: self._export(record, returned))

    def _export(self, record: calls.CallRecord, returned_ns: int) -> None:
        end = time.time_ns()
        record.trace.add("send", returned_ns, end)
        attributes = {
            "rpc.method": record.method,
            "genserve.model": record.model,
            "genserve.images": record.images,
            "genserve.request_id": record.request_id,
            "rpc.grpc.status_code": record.code,
            "net.peer": record.peer,
        }
        self.tracer.export(record.trace, record.method, record.start_ns, end, attributes)


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # the client left, or the deadline passed
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return status_name(exc) if isinstance(exc, ServingError) else "INTERNAL"


def _to_abort(exc: BaseException) -> bool:
    """Whether the call must be aborted with ``exc``'s status: not when a servicer aborted already,
    nor when the call was cancelled or closed (CancelledError and GeneratorExit are BaseExceptions)."""
    return isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError)


def _wrap_unary_response(
    behavior: Callable[..., Awaitable[Any]], method: str, gate: CallGate, work: bool, streaming_request: bool
) -> Callable[..., Awaitable[Any]]:
    admission = gate.admission if work else contextlib.nullcontext()

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        record, token = gate.enter(context, method)
        try:
            gate.check(context)
            request = _parsed_stream(request) if streaming_request else _parsed(request)
            with admission:
                return await behavior(request, context)
        except BaseException as exc:
            record.code = _code_of(exc, context)
            if not _to_abort(exc):
                raise  # the status is set, or the call is gone
            await abort_with(context, exc, method)
        finally:
            gate.leave(record, token, work, context)

    return wrapper


def _wrap_response_stream(
    behavior: Callable[..., Any], method: str, gate: CallGate, work: bool, streaming_request: bool
) -> Callable[..., Any]:
    admission = gate.admission if work else contextlib.nullcontext()

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        record, token = gate.enter(context, method)
        try:
            gate.check(context)
            request = _parsed_stream(request) if streaming_request else _parsed(request)
            with admission:
                async for response in behavior(request, context):
                    yield response
        except BaseException as exc:
            record.code = _code_of(exc, context)
            if not _to_abort(exc):
                raise  # the status is set, or the call is gone
            await abort_with(context, exc, method)
        finally:
            gate.leave(record, token, work, context)

    return wrapper


def _kind(handler: grpc.RpcMethodHandler) -> str:
    return (
        "stream_stream"
        if handler.request_streaming and handler.response_streaming
        else "stream_unary"
        if handler.request_streaming
        else "unary_stream"
        if handler.response_streaming
        else "unary_unary"
    )


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


def _quietly_unimplemented(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """For the generated base class's synchronous UNIMPLEMENTED (unary methods), which raises
    NotImplementedError: grpcio logs a traceback for each call of it, and answers its unparseable
    requests UNKNOWN. The same status, without either."""
    if handler.request_streaming or handler.response_streaming:
        return handler
    return handler._replace(
        unary_unary=_unimplemented, request_deserializer=_never_raising(handler.request_deserializer)
    )


def _wrap(
    behavior: Callable[..., Any], method: str, gate: CallGate, work: bool, streaming_request: bool
) -> Callable[..., Any] | None:
    """``behavior`` wrapped (see ``register``); None for a synchronous one, which is left alone."""
    if inspect.isasyncgenfunction(behavior):
        return _wrap_response_stream(behavior, method, gate, work, streaming_request)
    if inspect.iscoroutinefunction(behavior):
        return _wrap_unary_response(behavior, method, gate, work, streaming_request)
    return None


def _wrapped(handler: grpc.RpcMethodHandler, method: str, gate: CallGate, work: bool) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped and its request deserializer made never to raise."""
    kind = _kind(handler)
    wrapped = _wrap(getattr(handler, kind), method, gate, work, handler.request_streaming)
    if wrapped is None:  # a synchronous handler: the generated base class's UNIMPLEMENTED
        return _quietly_unimplemented(handler)
    return handler._replace(**{kind: wrapped, "request_deserializer": _never_raising(handler.request_deserializer)})


def _parse_checked(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` answering INVALID_ARGUMENT for a unary request that does not parse, and nothing
    else added: no token, record or admission (``register_open``)."""
    behavior = handler.unary_unary or handler.unary_stream
    if handler.request_streaming or not inspect.iscoroutinefunction(behavior):
        return _quietly_unimplemented(handler)

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = _parsed(request)
        except InvalidArgument as exc:
            await abort_with(context, exc, method)
        return await behavior(request, context)

    kind = _kind(handler)  # grpc.health's Watch is a coroutine that writes with context.write
    return handler._replace(**{kind: checked, "request_deserializer": _never_raising(handler.request_deserializer)})


class _Registrations:
    """Stands in for the server while a generated ``add_*_to_server`` runs, to keep its handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # built again from the method handlers, wrapped

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = dict(handlers)


def register(
    server: grpc.aio.Server,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    gate: CallGate,
    work_methods: Collection[str] = (),
) -> None:
    """Register ``servicer`` on ``server`` with its generated ``add_..._to_server``, every method
    wrapped: exceptions leave as the right gRPC status, tokens are checked, the call is recorded,
    and the methods named in ``work_methods`` pass through admission and are counted in the
    request metrics."""
    registrations = _Registrations()
    add_to_server(servicer, registrations)
    for service, handlers in registrations.services.items():
        wrapped = {
            name: _wrapped(handler, f"/{service}/{name}", gate, name in work_methods)
            for name, handler in handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, wrapped)


def register_open(server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: Any) -> None:
    """Register a service open to all (health: probes carry no token) with its generated
    ``add_..._to_server``, its requests that do not parse answered INVALID_ARGUMENT like every
    other service's (grpcio answers them UNKNOWN and logs a traceback)."""
    registrations = _Registrations()
    add_to_server(servicer, registrations)
    for service, handlers in registrations.services.items():
        wrapped = {name: _parse_checked(handler, f"/{service}/{name}") for name, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, wrapped)


def with_error_statuses(
    servicer: Any, service: ServiceDescriptor, admission: Admission | None = None, admitted: Collection[str] = ()
) -> Any:
    """``servicer`` with every RPC method of ``service`` wrapped as ``register`` does, for a server
    that registers it with the generated ``add_..._to_server`` itself (tests, embedders)."""
    gate = CallGate(admission or Admission())
    for method in service.methods:
        name, work = f"/{service.full_name}/{method.name}", method.name in admitted
        wrapped = _wrap(getattr(servicer, method.name), name, gate, work, method.client_streaming)
        if wrapped is not None:
            setattr(servicer, method.name, wrapped)
    return servicer
