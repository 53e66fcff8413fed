"""genserve's compiled gRPC transport: gRPC C++ carries the calls, Python runs the same handlers.

grpcio's asyncio server spends most of a small call's CPU in its own Cython and thread hand-offs
(``benchmarks/profile_frontend.py``: 51% of the GIL-holding samples on dcgan-mnist at
concurrency 16, more than every genserve module together). ``NativeServer`` is a
``grpc.aio.Server`` whose transport is ``_frontend`` (``frontend.cc``): gRPC C++ owns the port,
the connections and each call's reads and writes on its own threads, and hands the event loop
plain events (a call arrived with its first message, a message, the client's half-close, a
cancellation, the call's end) through one eventfd. The loop runs the handlers the generated
``add_*_to_server`` functions registered, with this module's ``ServicerContext``, and answers
with bytes. So every service, error mapping, deadline, batcher and metric is the one code path
both transports run; what changes is only who moves the bytes.

What a handler's context offers here: ``abort``, ``time_remaining``, ``write``, ``cancelled``,
``done``, ``set_code``/``set_details``/``code``/``details``, ``add_done_callback``, the client's
``invocation_metadata`` and ``peer`` (as grpcio gives them), and ``set_trailing_metadata``. The
port serves plain text or TLS (``add_tls_port``, mutual TLS with a client CA); connection age and
keepalive are channel arguments (``channel_args``), as grpcio takes them.

Built by ``serving/native/build.sh`` (``make`` runs it); ``available()`` says whether it is.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import grpc

# Not built, or built against a gRPC C++ that is gone: the server runs on grpcio and says why.
_frontend: Any = None
if importlib.util.find_spec(f"{__name__}._frontend") is None:
    _IMPORT_ERROR = "no _frontend extension module in serving/native/"
else:
    try:
        _frontend = importlib.import_module(f"{__name__}._frontend")
        _IMPORT_ERROR = ""
    except ImportError as exc:
        _IMPORT_ERROR = f"its extension module does not load: {exc}"

log = logging.getLogger(__name__)

BUILD_COMMAND = "bash serving/native/build.sh"


def available() -> bool:
    return _frontend is not None


def grpc_version() -> str:
    return _frontend.GRPC_VERSION if _frontend is not None else ""


def unavailable_reason() -> str:
    """Why ``available()`` is False, with the command that fixes it."""
    return f"the compiled transport is unavailable ({_IMPORT_ERROR}); build it with `{BUILD_COMMAND}`"


class _CallDetails(NamedTuple):  # grpc.HandlerCallDetails, for generic handlers
    method: str
    invocation_metadata: tuple


Metadata = tuple[tuple[str, str | bytes], ...]


def _code_of(code: grpc.StatusCode) -> int:
    return code.value[0]


class _Outbox:
    """Call endings of one turn of the event loop, handed to the transport together at its end: a
    batch's answers resolve in the same turn, and one crossing with one wake-up of the sender
    thread costs less than one each (``finish`` was 6% of the loop's GIL time)."""

    def __init__(self, server: Any, loop: asyncio.AbstractEventLoop):
        self._server = server
        self._loop = loop
        self._ends: list[tuple[int, int, str, bytes | None, Metadata | None]] = []

    def add(self, call_id: int, code: int, details: str, last: bytes | None, trailing: Metadata | None) -> None:
        if not self._ends:
            self._loop.call_soon(self.flush)
        self._ends.append((call_id, code, details, last, trailing))

    def flush(self) -> None:
        ends, self._ends = self._ends, []
        if ends:
            self._server.finish_all(ends)


class _Call:
    """One call on the event loop's side: its first message, its reads and its task."""

    __slots__ = (
        "id",
        "_server",
        "_outbox",
        "first",
        "deadline",
        "metadata",
        "peer",
        "trailing",
        "task",
        "cancelled",
        "_reading",
        "_finished",
        "_done_callbacks",
    )

    def __init__(
        self,
        server: Any,
        outbox: _Outbox,
        call_id: int,
        timeout: float | None,
        first: bytes | None,
        metadata: Metadata,
        peer: str,
    ):
        self.id = call_id
        self._server = server
        self._outbox = outbox
        self.first = first
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.metadata = metadata
        self.peer = peer
        self.trailing: Metadata | None = None  # sent with the status
        self.task: asyncio.Task | None = None
        self.cancelled = False
        self._reading: asyncio.Future | None = None
        self._finished = False
        self._done_callbacks: list[Callable[[], None]] = []

    async def messages(self, deserialize: Callable[[bytes], Any] | None) -> AsyncIterator[Any]:
        """The client's messages of a request-streaming call, until its half-close."""
        if self.first is not None:
            first, self.first = self.first, None
            yield _parse(deserialize, first)
        loop = asyncio.get_running_loop()
        while True:
            self._reading = loop.create_future()
            if not self._server.read(self.id):
                return
            payload = await self._reading
            if payload is None:
                return
            yield _parse(deserialize, payload)

    def deliver(self, payload: bytes | None) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.set_result(payload)

    def write(self, payload: bytes) -> bool:
        return not self._finished and self._server.write(self.id, payload)

    def finish(self, code: grpc.StatusCode, details: str = "", last: bytes | None = None) -> None:
        """End the call (once; later calls do nothing), after the writes already started."""
        if not self._finished:
            self._finished = True
            self._outbox.add(self.id, _code_of(code), details, last, self.trailing)

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def ended(self) -> None:
        for callback in self._done_callbacks:
            callback()


def _parse(deserialize: Callable[[bytes], Any] | None, payload: bytes) -> Any:
    return payload if deserialize is None else deserialize(payload)


def _bytes(serialize: Callable[[Any], bytes] | None, message: Any) -> bytes:
    return message if serialize is None else serialize(message)


class ServicerContext(grpc.aio.ServicerContext):
    """What genserve's and grpcio's servicers use of a call's context (see the module doc)."""

    def __init__(self, call: _Call, serialize: Callable[[Any], bytes] | None):
        self._call = call
        self._serialize = serialize
        self._code: grpc.StatusCode | None = None
        self._details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence = ()) -> None:
        if code is grpc.StatusCode.OK:
            raise ValueError("abort() needs a status other than OK")
        self._code, self._details = code, details
        raise grpc.aio.AbortError(details)

    async def abort_with_status(self, status: Any) -> None:
        await self.abort(status.code, status.details)

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    async def write(self, message: Any) -> None:
        self._call.write(_bytes(self._serialize, message))

    async def read(self) -> Any:
        raise NotImplementedError("read the request iterator the handler was given")

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call._finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call._done_callbacks.append(lambda: callback(self))

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def invocation_metadata(self) -> Metadata:
        return self._call.metadata

    def peer(self) -> str:
        return self._call.peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict:
        return {}

    async def send_initial_metadata(self, initial_metadata: Sequence) -> None:
        pass

    def set_trailing_metadata(self, trailing_metadata: Sequence) -> None:
        self._call.trailing = tuple((key, value) for key, value in trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        return self._call.trailing or ()

    def set_compression(self, compression: grpc.Compression) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass


class NativeServer(grpc.aio.Server):
    """A ``grpc.aio.Server`` on the compiled transport (one port per server, plain text or TLS).
    ``channel_args``: integer gRPC channel arguments (``grpc.max_connection_age_ms``, ...)."""

    def __init__(self, max_message_bytes: int, channel_args: Sequence[tuple[str, int]] = ()):
        if _frontend is None:
            raise RuntimeError(unavailable_reason())
        self._limit = max_message_bytes
        self._channel_args = list(channel_args)
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._server: Any = None
        self._calls: dict[int, _Call] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: _Outbox | None = None
        self._terminated = asyncio.Event()

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        for name, handler in method_handlers.items():
            self._methods[f"/{service_name}/{name}"] = handler

    def add_insecure_port(self, address: str) -> int:
        return self._listen(address, None)

    def add_tls_port(self, address: str, private_key: bytes, certificate_chain: bytes, client_ca: bytes | None) -> int:
        """Serve TLS on ``address`` (PEM bytes); ``client_ca``: mutual TLS, clients must present a
        certificate it signed."""
        return self._listen(address, (private_key, certificate_chain, client_ca or b""))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        raise NotImplementedError("grpc.ServerCredentials are opaque: give the PEM bytes to add_tls_port")

    def _listen(self, address: str, tls: tuple[bytes, bytes, bytes] | None) -> int:
        if self._server is not None:
            raise RuntimeError("the compiled transport serves one port per server")
        streaming = [method for method, handler in self._methods.items() if handler.request_streaming]
        # RuntimeError if the port is taken, or the certificate or key does not load
        self._server = _frontend.Server(address, self._limit, self._limit, streaming, tls, self._channel_args)
        return self._server.port

    async def start(self) -> None:
        if self._server is None:
            raise RuntimeError("add_insecure_port first")
        self._loop = asyncio.get_running_loop()
        self._outbox = _Outbox(self._server, self._loop)
        self._loop.add_reader(self._server.fd, self._drain)
        self._drain()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, give calls in flight ``grace`` seconds, cancel the rest, wait for all."""
        server = self._server
        if server is None or self._loop is None:
            return
        await asyncio.to_thread(server.shutdown, grace or 0.0)
        self._drain()
        self._loop.remove_reader(server.fd)
        tasks = [call.task for call in self._calls.values() if call.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._outbox.flush()
        self._calls.clear()
        self._server = None
        self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _handler(self, method: str) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(method)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(_CallDetails(method, ()))  # by method name only, so cached
                if handler is not None:
                    self._methods[method] = handler
                    break
        return handler

    def _drain(self) -> None:
        """Take every event the transport queued and act on it (the eventfd's reader)."""
        calls, server = self._calls, self._server
        if server is None:
            return
        for event in server.take_events():
            kind, call_id = event[0], event[1]
            if kind == _frontend.ARRIVED:
                _, _, method, timeout, payload, metadata, peer = event
                call = _Call(server, self._outbox, call_id, timeout, payload, metadata, peer)
                calls[call_id] = call
                call.task = self._loop.create_task(self._serve(call, method))
                continue
            payload = event[4]
            call = calls.get(call_id)
            if call is None:
                continue
            if kind == _frontend.MESSAGE or kind == _frontend.HALF_CLOSED:
                call.deliver(payload)
            elif kind == _frontend.CANCELLED:
                call.cancel()
            elif kind == _frontend.DONE:
                del calls[call_id]
                call.ended()

    async def _serve(self, call: _Call, method: str) -> None:
        context = ServicerContext(call, None)
        try:
            handler = self._handler(method)
            if handler is None:
                call.finish(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {method}")
                return
            context._serialize = handler.response_serializer
            if handler.request_streaming:
                request = call.messages(handler.request_deserializer)
            elif call.first is None:
                call.finish(grpc.StatusCode.INVALID_ARGUMENT, "the client sent no request message")
                return
            else:
                try:
                    request = _parse(handler.request_deserializer, call.first)
                except Exception as exc:  # genserve's own handlers never raise here (interceptors.register)
                    call.finish(grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {exc}")
                    return
            if not handler.response_streaming:
                behavior = handler.unary_unary or handler.stream_unary
                response = behavior(request, context)
                if inspect.isawaitable(response):  # else a synchronous handler (generated stubs' UNIMPLEMENTED)
                    response = await response
                if response is None and context.code() not in (None, grpc.StatusCode.OK):
                    call.finish(context.code(), context.details())
                else:
                    call.finish(grpc.StatusCode.OK, "", _bytes(handler.response_serializer, response))
                return
            behavior = handler.unary_stream or handler.stream_stream
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    call.write(_bytes(handler.response_serializer, response))
            else:
                await result  # the handler wrote with context.write
            code = context.code() or grpc.StatusCode.OK
            call.finish(code, context.details())
        except grpc.aio.AbortError:
            call.finish(context.code() or grpc.StatusCode.UNKNOWN, context.details())
        except asyncio.CancelledError:
            call.finish(grpc.StatusCode.CANCELLED, "the call was cancelled")
        except Exception as exc:
            if context.code() not in (None, grpc.StatusCode.OK):  # set before raising, as grpcio honours
                call.finish(context.code(), context.details())
                return
            log.error("%s raised %s", method, type(exc).__name__, exc_info=exc)
            call.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
        finally:  # whatever happened, the call ends (a no-op when it has): an open call holds shutdown
            call.finish(grpc.StatusCode.INTERNAL, "the server could not answer the call; see its log")
