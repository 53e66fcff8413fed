"""Per-request traces through OpenTelemetry: where one call's time went.

A sampled call (``--trace-rate``, 0..1) carries a ``CallTrace``: the stages the server records as
the call goes (``received``; ``queued`` until its first batch; each ``engine`` call or diffusion
``step`` it took part in, with the batch's id, size and bucket; ``serialize``; ``send``, until the
transport reports the call done). Recording is appending tuples (cheap, on whatever thread the
stage ran); when the call ends, the stages become OpenTelemetry spans with their own timestamps,
children of one span per call (a ``traceparent`` the client sent becomes its parent), exported
on the SDK's background thread to:

- a Chrome-trace JSON file (``--trace-file``), which Perfetto (ui.perfetto.dev) and
  chrome://tracing open: one track per call, its stages as nested slices, their attributes as
  args (the file is a JSON array written as spans arrive; a server that dies leaves a readable
  file without the closing bracket, which the format allows);
- an OTLP collector (``--otlp-endpoint``, gRPC), where one is configured.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from genserve.serving.config import TraceOptions

log = logging.getLogger(__name__)

SERVICE_NAME = "genserve"


class CallTrace:
    """The stages of one call: (name, start ns, end ns, attributes), times from ``time.time_ns``."""

    __slots__ = ("stages", "parent")

    def __init__(self, parent: Any = None):
        self.stages: list[tuple[str, int, int, dict[str, Any]]] = []
        self.parent = parent  # an OpenTelemetry context from the client's traceparent, or None

    def add(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        self.stages.append((name, start_ns, end_ns, attributes))


def now_ns() -> int:
    return time.time_ns()


class Tracer:
    """Samples calls and exports their traces (see the module doc)."""

    def __init__(self, options: TraceOptions):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.options = options
        self._random = random.Random()
        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        self.file_exporter: ChromeTraceExporter | None = None
        if options.file is not None:
            self.file_exporter = ChromeTraceExporter(options.file)
            self.provider.add_span_processor(BatchSpanProcessor(self.file_exporter, schedule_delay_millis=1000))
        if options.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=options.otlp_endpoint, insecure=True)
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("genserve.serving")
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._propagator = TraceContextTextMapPropagator()
        log.info(
            "tracing %.0f%% of calls to %s",
            100 * options.rate,
            " and ".join(str(x) for x in (options.file, options.otlp_endpoint) if x),
        )

    def start(self, metadata: Iterable[tuple[str, Any]]) -> CallTrace | None:
        """A trace for a new call, if it is sampled; the client's ``traceparent`` becomes its parent."""
        if self.options.rate < 1.0 and self._random.random() >= self.options.rate:
            return None
        carrier = {key: value for key, value in metadata if key in ("traceparent", "tracestate")}
        return CallTrace(self._propagator.extract(carrier) if carrier else None)

    def export(self, trace: CallTrace, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
        """The call's span (``name``, from ``start_ns`` to ``end_ns``) and one child per stage."""
        from opentelemetry import trace as otel

        root = self._tracer.start_span(name, context=trace.parent, start_time=start_ns, attributes=attributes)
        context = otel.set_span_in_context(root)
        for stage, start, end, attrs in trace.stages:
            span = self._tracer.start_span(stage, context=context, start_time=start, attributes=attrs or None)
            span.end(end_time=max(start, end))
        root.end(end_time=end_ns)

    def close(self) -> None:
        self.provider.shutdown()  # flushes the processors, closes the file


class ChromeTraceExporter:
    """An OpenTelemetry ``SpanExporter`` writing Chrome's trace event format (JSON array): one
    complete event ("X") per span, one track (tid) per trace, attributes as args."""

    def __init__(self, path: Path):
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._ok = SpanExportResult.SUCCESS
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w")
        self._file.write('[{"name":"process_name","ph":"M","pid":1,"args":{"name":"genserve"}}')
        self._lock = threading.Lock()
        self._tracks: dict[int, int] = {}  # trace id -> tid
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> Any:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            tid = self._tracks.setdefault(ctx.trace_id, len(self._tracks) + 1)
            args = dict(span.attributes or {})
            args["span_id"] = f"{ctx.span_id:016x}"
            args["trace_id"] = f"{ctx.trace_id:032x}"
            event = {
                "name": span.name,
                "cat": "call" if span.parent is None or not span.parent.is_valid else "stage",
                "ph": "X",
                "pid": 1,
                "tid": tid,
                "ts": span.start_time / 1e3,
                "dur": max(0, span.end_time - span.start_time) / 1e3,
                "args": args,
            }
            lines.append("," + json.dumps(event, separators=(",", ":"), default=str))
        with self._lock:
            if self._file.closed:
                return self._ok
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
            self.spans += len(spans)
        return self._ok

    def shutdown(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write("]\n")
                self._file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def read_trace_file(path: Path) -> list[dict[str, Any]]:
    """The events of a trace file this module wrote, closed or not (a server may still be writing)."""
    text = path.read_text().rstrip()
    if not text.endswith("]"):
        text += "]"
    return json.loads(text)
