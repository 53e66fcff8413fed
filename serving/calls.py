"""What the server knows about each call: its request id, peer, model, images, status and latency.

``with_error_statuses`` (interceptors) opens a ``CallRecord`` for every call of genserve's services
and closes it when the call ends, whatever its status; the servicers fill in the model and the
images (``current()``). Closing it counts the call in the request metrics (calls that run models,
on both APIs) and writes the access log line (logger ``genserve.access``: INFO with
``--log-format json``, DEBUG otherwise).

The request id is the client's ``x-request-id`` metadata when it sent one (a balancer's or a
tracing front end's), else a new one. It goes back in the call's trailing metadata and into every
log line written while the call runs (a context variable, read by ``RequestIdFilter``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from genserve.serving.metrics import UNKNOWN_MODEL
from genserve.serving.tracing import CallTrace

REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 128  # characters kept of a client's id: it goes into every log line

access_log = logging.getLogger("genserve.access")
_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("genserve_call", default=None)


@dataclass(slots=True)
class CallRecord:
    method: str  # /package.Service/Method
    request_id: str
    peer: str
    started: float  # time.perf_counter()
    model: str = UNKNOWN_MODEL  # set by the servicer once the request names a model
    images: int = 0  # images asked for (generation) or submitted (translation, inference)
    code: str = "OK"
    trace: CallTrace | None = None  # when the call is sampled for tracing
    start_ns: int = 0  # time.time_ns() at the start, for the trace

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def fields(self) -> dict[str, object]:
        return {
            "method": self.method,
            "model": self.model,
            "status": self.code,
            "images": self.images,
            "latency_ms": round(self.seconds * 1e3, 3),
            "request_id": self.request_id,
            "peer": self.peer,
        }


def request_id_of(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == REQUEST_ID and isinstance(value, str) and value:
            return value[:MAX_REQUEST_ID]
    return uuid.uuid4().hex


def begin(method: str, metadata: Iterable[tuple[str, str | bytes]], peer: str) -> tuple[CallRecord, contextvars.Token]:
    record = CallRecord(method, request_id_of(metadata), peer, time.perf_counter())
    return record, _current.set(record)


def current() -> CallRecord | None:
    """The record of the call this task serves (None outside a call)."""
    return _current.get()


def trace() -> CallTrace | None:
    """The current call's trace, if it is traced: schedulers add its stages."""
    record = _current.get()
    return None if record is None else record.trace


def name(model: str, images: int) -> None:
    """The current call runs ``model`` on ``images`` more images (a stream's requests add up)."""
    record = _current.get()
    if record is not None:
        record.model = model
        record.images += images


def end(record: CallRecord, token: contextvars.Token) -> None:
    _current.reset(token)
    level = logging.INFO if _json_logs else logging.DEBUG
    if access_log.isEnabledFor(level):
        access_log.log(level, "%s %s", record.method, record.code, extra={"call": record.fields()})


# Log formatting -----------------------------------------------------------------------------------

_json_logs = False


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current call's, or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = _current.get()
        record.request_id = call.request_id if call is not None else getattr(record, "request_id", None)
        return True


class TextFormatter(logging.Formatter):
    """The usual text line, with ``request_id=...`` at its end inside a call."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        call = getattr(record, "call", None)
        if call is not None:
            line += " " + " ".join(f"{k}={v}" for k, v in call.items() if k not in ("method", "status"))
        elif getattr(record, "request_id", None):
            line += f" request_id={record.request_id}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id inside a call, the
    call's fields on access lines, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            out["request_id"] = record.request_id
        call = getattr(record, "call", None)
        if call is not None:
            out.update(call)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_format: str) -> None:
    """Every root handler writes ``log_format`` ("text" or "json") lines carrying request ids."""
    global _json_logs
    _json_logs = log_format == "json"
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter() if _json_logs else TextFormatter(TEXT_FORMAT))
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
    if _json_logs and not access_log.isEnabledFor(logging.INFO):
        access_log.setLevel(logging.INFO)
