"""Domain errors. Each maps to exactly one gRPC status, in one place (``STATUS``); the gRPC
layer translates, nothing else in serving knows about status codes."""

from __future__ import annotations


class ServingError(Exception):
    """Base class: an error whose message is safe and useful to show the client."""


class InvalidArgument(ServingError):
    """The request is malformed or out of the model's limits (client's fault; do not retry)."""


class NotFound(ServingError):
    """No such model (or version)."""


class Overloaded(ServingError):
    """A bounded queue is full; retry later or elsewhere."""


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its work could be done."""


class Unavailable(ServingError):
    """The server is not accepting work (starting, draining, or a model failed to load)."""


class Cancelled(ServingError):
    """The client went away; the work was dropped."""


class Unauthenticated(ServingError):
    """No valid credentials (a bearer token) came with the call."""


class InternalError(ServingError):
    """A bug or an engine failure; never raised for client mistakes."""


# Name of the grpc.StatusCode member for each error; the gRPC layer resolves it.
STATUS: dict[type[ServingError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    Overloaded: "RESOURCE_EXHAUSTED",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Unavailable: "UNAVAILABLE",
    Cancelled: "CANCELLED",
    Unauthenticated: "UNAUTHENTICATED",
    InternalError: "INTERNAL",
}


def status_name(error: BaseException) -> str:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return "INTERNAL"
