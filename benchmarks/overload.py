"""Overload: open-loop Poisson load at 3x the measured capacity for 30 s against a real server.

    python -m benchmarks.overload            # ~1.5 min; writes results/overload.json and .png

1. capacity: closed loop at concurrency 32 for 10 s (requests of 32 images of ``dcgan-mnist``,
   large enough that the Python load generator can offer 3x without saturating);
2. overload: Poisson arrivals at 3x that rate for 30 s, every request with ``timeout_ms``;
3. recovery: the closed-loop run again, right after.

Checked: the server stays up; every request gets an answer (OK, RESOURCE_EXHAUSTED from the
bounded queue, or DEADLINE_EXCEEDED) within its deadline + 1 s; resident memory grows < 20%;
throughput after is back to that before. The server's RSS is sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
from pathlib import Path

from benchmarks.report import new_output
from benchmarks.serverproc import start_server
from genserve.loadgen import LoadSpec, plot_report, run_load

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "dcgan-mnist"
ANSWERED = {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.samples.append(rss_bytes(self.pid))

    def stop(self) -> list[int]:
        self._halt.set()
        self.join()
        return self.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / capacity")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of overload")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="each overload request's timeout_ms")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.json = args.json or new_output("overload")  # a new run folder each run

    flags = ["--max-batch-size", "64", "--max-queue-size", "64"]
    server = start_server(*flags)
    pid = server.proc.pid
    closed = dict(server=server.target, model=MODEL, num_images=args.num_images, concurrency=32, duration=10.0)
    try:
        before = run_load(LoadSpec(**closed, warmup=2.0))
        capacity = before.stats["throughput"]
        print(f"capacity: {capacity:.1f} req/s of {args.num_images} images")
        rss_before = rss_bytes(pid)
        sampler = RssSampler(pid)
        sampler.start()
        overload = run_load(
            LoadSpec(
                server=server.target,
                model=MODEL,
                num_images=args.num_images,
                rate=args.factor * capacity,
                duration=args.duration,
                timeout_ms=args.timeout_ms,
                warmup=0.0,
            )
        )
        samples = sampler.stop()
        after = run_load(LoadSpec(**closed, warmup=0.0))
        rss_after = rss_bytes(pid)
        alive = server.proc.poll() is None
    finally:
        code = server.stop()

    o = overload.to_dict()
    worst = max((v["max"] for v in o["latency_by_status"].values()), default=0.0)
    result = {
        "what": f"{MODEL}, {args.num_images} images per request, server flags {' '.join(flags)}",
        "machine": f"{platform.machine()} CPU x{os.cpu_count()}, Python {platform.python_version()}",
        "capacity_rps": round(capacity, 2),
        "offered_rps": round(o["offered_rate"], 2),
        "overload_factor": args.factor,
        "timeout_ms": args.timeout_ms,
        "status_counts": o["status_counts"],
        "unanswered_or_other": sum(n for s, n in o["status_counts"].items() if s not in ANSWERED),
        "worst_latency_s": round(worst, 3),
        "all_answered_within_deadline_plus_1s": worst <= args.timeout_ms / 1000 + 1.0
        and all(s in ANSWERED for s in o["status_counts"]),
        "overload_ok_throughput_rps": round(o["throughput"], 2),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_peak_mb": round(max(samples + [rss_after]) / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "rss_growth": round(max(samples + [rss_after]) / rss_before - 1, 4),
        "throughput_before_rps": round(before.stats["throughput"], 2),
        "throughput_after_rps": round(after.stats["throughput"], 2),
        "recovery_ratio": round(after.stats["throughput"] / before.stats["throughput"], 3),
        "p99_before_s": before.stats["latency_p99"],
        "p99_after_s": after.stats["latency_p99"],
        "before_timeline_ok": [b["ok"] for b in before.to_dict()["timeline"]],
        "after_timeline_ok": [b["ok"] for b in after.to_dict()["timeline"]],
        "server_alive_after": alive,
        "server_exit_code": code,
        "overload_timeline": o["timeline"],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot_report(overload, args.json.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "overload_timeline"}, indent=2))


if __name__ == "__main__":
    main()
