"""What the KServe API's ModelStatistics RPC reports, counted per model.

``success`` and ``fail`` count this API's ModelInfer calls with their wall time (``InferStats``,
kept by the servicer). ``queue``, ``compute_infer``, ``execution_count`` and ``inference_count``
are the model's scheduler totals (``metrics.Totals``), which cover the requests of both APIs
because they share the same engine calls: queue time once per request (each ModelInfer row is one
request), compute time as Triton attributes it to batched requests, executions = engine calls,
inferences = engine rows; ``batch_stats`` counts each engine call once under its batch size, with
its duration. Compute input and output run inside the engine call: counted, with zero time (their
time is in compute_infer). ``kserve_contract.model_statistics_to_proto`` puts both
in Triton's message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class InferStats:
    """Cumulative ModelInfer outcomes of one model (the success and fail parts of Triton's
    ModelStatistics; the rest comes from the scheduler's totals)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0  # arrival of the latest call, milliseconds since the epoch

    def started(self) -> int:
        self.last_inference_ms = time.time_ns() // 1_000_000
        return time.perf_counter_ns()

    def succeeded(self, started_ns: int) -> None:
        self.success_count += 1
        self.success_ns += time.perf_counter_ns() - started_ns

    def failed(self, started_ns: int) -> None:
        self.fail_count += 1
        self.fail_ns += time.perf_counter_ns() - started_ns
