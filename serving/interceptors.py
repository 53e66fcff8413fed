"""Errors mapped to gRPC statuses once, for every RPC of genserve's services (after TGI's
ExceptionInterceptor), and those RPCs counted for the drain at shutdown (``Admission``).

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
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from genserve.serving.errors import ServingError, Unavailable, status_name

log = logging.getLogger(__name__)


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """Abort the call with the status that ``exc`` maps to (never returns)."""
    if isinstance(exc, ServingError):
        code = grpc.StatusCode[status_name(exc)]
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", method, exc, exc_info=exc)
        else:
            log.info("%s rejected: %s %s", method, code.name, exc)
        await context.abort(code, str(exc))
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

    def close(self) -> None:
        """Refuse every call from now on (the calls in flight go on)."""
        self.open = False

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


def _wrap_coroutine(
    behavior: Callable[..., Awaitable[Any]], method: str, gate: contextlib.AbstractContextManager
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            with gate:
                return await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise  # the servicer aborted on its own; the status is set
        except Exception as exc:
            await abort_with(context, exc, method)

    return wrapper


def _wrap_async_generator(
    behavior: Callable[..., Any], method: str, gate: contextlib.AbstractContextManager
) -> Callable[..., Any]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            with gate:
                async for response in behavior(request_or_iterator, context):
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc, method)

    return wrapper


def _wrap(
    behavior: Callable[..., Any] | None, method: str, gate: contextlib.AbstractContextManager
) -> Callable[..., Any] | None:
    if behavior is None:
        return None
    if inspect.isasyncgenfunction(behavior):
        return _wrap_async_generator(behavior, method, gate)
    if inspect.iscoroutinefunction(behavior):
        return _wrap_coroutine(behavior, method, gate)
    return behavior  # a synchronous handler: grpc.aio runs it in a thread; not used by genserve


def with_error_statuses(
    servicer: Any, service: ServiceDescriptor, admission: Admission | None = None, admitted: Collection[str] = ()
) -> Any:
    """``servicer`` with every RPC method of ``service`` wrapped so that exceptions leave as the
    right gRPC status, and the methods named in ``admitted`` pass through ``admission``; register
    the result with the generated ``add_..._to_server``."""
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        gate = admission if admission is not None and method.name in admitted else contextlib.nullcontext()
        setattr(servicer, method.name, _wrap(behavior, f"/{service.full_name}/{method.name}", gate))
    return servicer
