"""Per-request traces through OpenTelemetry: where one call's time went.

A sampled call (``--trace-rate``, 0..1) carries a ``CallTrace``: the stages the server records as
the call goes (``queue`` until its first batch; each ``engine`` call or diffusion ``step`` it took
part in, with the batch's id, size and request count; ``serialize``; ``send``, until the transport
reports the call done). Recording is appending tuples (cheap, on whatever thread the
stage ran); when the call ends they are exported, with their own timestamps, as children of one
span per call (a ``traceparent`` the client sent becomes its parent), to:

- a Chrome-trace JSON file (``--trace-file``), which Perfetto (ui.perfetto.dev) and
  chrome://tracing open: one track per call, its stages as nested slices, their attributes as
  args (the file is a JSON array written as spans arrive; a server that dies leaves a readable
  file without the closing bracket, which the format allows);
- an OTLP collector (``--otlp-endpoint``, gRPC), as OpenTelemetry SDK spans, where one is
  configured.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import threading
import time
from collections.abc import Iterable
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
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.options = options
        self._random = random.Random()
        self._propagator = TraceContextTextMapPropagator()
        self.file_writer = ChromeTraceWriter(options.file) if options.file is not None else None
        self.provider = self._tracer = None
        if options.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=options.otlp_endpoint, insecure=True))
            )
            self._tracer = self.provider.get_tracer("genserve.serving")
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
        if self.file_writer is not None:
            self.file_writer.add(name, start_ns, end_ns, attributes, trace.stages)
        if self._tracer is not None:
            from opentelemetry import trace as otel

            root = self._tracer.start_span(name, context=trace.parent, start_time=start_ns, attributes=attributes)
            context = otel.set_span_in_context(root)
            for stage, start, end, attrs in trace.stages:
                span = self._tracer.start_span(stage, context=context, start_time=start, attributes=attrs or None)
                span.end(end_time=max(start, end))
            root.end(end_time=end_ns)

    def close(self) -> None:
        if self.file_writer is not None:
            self.file_writer.close()
        if self.provider is not None:
            self.provider.shutdown()  # flushes the OTLP exporter


_quote = json.encoder.encode_basestring  # the C version: a JSON string literal


def _value(value: Any) -> str:
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else _quote(str(value))


def _args(attributes: dict[str, Any]) -> str:
    if not attributes:
        return "{}"
    return "{" + ",".join([f"{_quote(k)}:{_value(v)}" for k, v in attributes.items()]) + "}"


class ChromeTraceWriter:
    """Chrome's trace event format (a JSON array), written by a thread of its own: one complete
    event ("X") per call and per stage, one track (tid) per call, attributes as args.

    It takes the calls' records straight from ``Tracer.export`` rather than as OpenTelemetry SDK
    spans: creating SDK span objects for every stage of every call cost 28% of `dcgan-mnist`'s
    throughput at concurrency 16 with every call traced (benchmarks/trace_overhead.py). The OTLP
    path keeps the SDK's spans."""

    FLUSH_SECONDS = 0.5

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w")
        self._file.write('[{"name":"process_name","ph":"M","pid":1,"args":{"name":"genserve"}}\n')
        self._pending: collections.deque[tuple] = collections.deque()  # thread-safe append and popleft
        self._tracks = 0
        self.calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genserve-trace-writer", daemon=True)
        self._thread.start()

    def add(self, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any], stages: list) -> None:
        self._pending.append((name, start_ns, end_ns, attributes, stages))

    def _run(self) -> None:
        while not self._stop.wait(self.FLUSH_SECONDS):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        lines, count = [], 0
        append = lines.append
        while pending:
            name, start_ns, end_ns, attributes, stages = pending.popleft()
            count += 1
            self._tracks += 1
            track = f',"ph":"X","pid":1,"tid":{self._tracks},"ts":'
            append(
                f',{{"name":{_quote(name)},"cat":"call"{track}{start_ns / 1e3:.3f},'
                f'"dur":{max(0, end_ns - start_ns) / 1e3:.3f},"args":{_args(attributes)}}}'
            )
            for stage, start, end, attrs in stages:
                append(
                    f',{{"name":"{stage}","cat":"stage"{track}{start / 1e3:.3f},'
                    f'"dur":{max(0, end - start) / 1e3:.3f},"args":{_args(attrs)}}}'
                )
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        self.calls += count

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._file.write("]\n")
        self._file.close()


def read_trace_file(path: Path) -> list[dict[str, Any]]:
    """The events of a trace file this module wrote, closed or not (a server may still be writing)."""
    text = path.read_text().rstrip()
    if not text.endswith("]"):
        text += "]"
    return json.loads(text)
