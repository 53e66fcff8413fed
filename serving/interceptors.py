"""Errors mapped to gRPC statuses once, for every RPC of the server (after TGI's ExceptionInterceptor).

A ``ServingError`` becomes its status from ``errors.STATUS`` with its message; anything else is a
bug: INTERNAL with a generic message for the client and the traceback in the log. Servicers just
raise domain errors and never touch status codes.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from genserve.serving.errors import ServingError, status_name

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


def _wrap_coroutine(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise  # the servicer aborted on its own; the status is set
        except Exception as exc:
            await abort_with(context, exc, method)

    return wrapper


def _wrap_async_generator(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for response in behavior(request_or_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc, method)

    return wrapper


def _wrap(behavior: Callable[..., Any] | None, method: str) -> Callable[..., Any] | None:
    if behavior is None:
        return None
    if inspect.isasyncgenfunction(behavior):
        return _wrap_async_generator(behavior, method)
    if inspect.iscoroutinefunction(behavior):
        return _wrap_coroutine(behavior, method)
    return behavior  # a synchronous handler: grpc.aio runs it in a thread; not used by genserve


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wrap every method handler so that exceptions leave as the right gRPC status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return handler._replace(
            unary_unary=_wrap(handler.unary_unary, method),
            unary_stream=_wrap(handler.unary_stream, method),
            stream_unary=_wrap(handler.stream_unary, method),
            stream_stream=_wrap(handler.stream_stream, method),
        )
