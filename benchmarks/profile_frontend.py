"""Where genserve's time goes under perf_analyzer: a ``py-spy --gil`` profile of the server.

    bash benchmarks/peers/setup.sh                     # once: perf_analyzer into .bench/
    pip install py-spy                                 # the sampler (not a dependency of genserve)
    python -m benchmarks.profile_frontend              # ~1 min; results/profile_frontend.json

It starts genserve on the bundled models, puts perf_analyzer on it (``dcgan-mnist``, concurrency
16, one row per request: the point where issue 6 compares against Triton), and samples the server
with ``py-spy record --gil`` (only samples where a thread holds the GIL) for ``--seconds``. Each
sample is charged to the innermost frame of ours it is in (the RPC handlers, the batcher, the
engine thread, the native transport's Python side) or, with none, to a loop callback with nothing
of ours below (on grpcio mostly its Cython call handling, invisible to py-spy) or the event loop
itself; the GIL share is the number of samples against ``rate × seconds``. The raw collapsed
stacks are kept next to the JSON. ``--frontend grpcio`` profiles the Python gRPC transport.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.report import new_output
from benchmarks.serverproc import start_server
from benchmarks.vs_triton import PERF_ANALYZER, input_data, tools_env
from genserve.serving.config import FRONTENDS

# Innermost matching frame decides; our own files first, so a handler that calls into grpc is ours.
OURS = (
    (
        "RPC handlers (decode, submit, respond)",
        (
            "serving/kserve.py",
            "serving/kserve_contract.py",
            "serving/kserve_stats.py",
            "serving/servicer.py",
            "serving/registry.py",
            "serving/convert.py",
        ),
    ),
    ("batcher and hand-off to the engine", ("serving/batcher.py", "serving/batching.py", "serving/scheduler.py")),
    ("engine thread (noise, ONNX Runtime, uint8)", ("serving/runner.py", "serving/engines.py", "genserve/noise.py")),
    ("metrics", ("serving/metrics.py", "prometheus_client")),
    ("native transport's Python side (events, dispatch)", ("serving/native/",)),
)
# Without a frame of ours: py-spy cannot see into grpc.aio's Cython, so a sample in a callback the
# loop runs (``Handle._run``) with nothing of ours below is, on grpcio, mostly grpc's call handling
# (and on both transports a C future's callbacks); one in the loop outside any callback is the
# loop itself (polling, the ready queue).
THEIRS = (
    ("loop callbacks with no frame of ours (on grpcio: its Cython call handling)", ("Handle._run", "grpc/_cython")),
    ("the event loop itself (polling, ready queue)", ("asyncio/", "selectors.py")),
)


def category(stack: list[str]) -> str:
    """The category of one sample; ``stack`` is outermost frame first, as py-spy writes it."""
    for frame in reversed(stack):  # ours: the innermost frame of ours decides
        for name, needles in OURS:
            if any(needle in frame for needle in needles):
                return name
    for name, needles in THEIRS:  # theirs: the first rule any frame matches
        if any(needle in frame for frame in stack for needle in needles):
            return name
    return "other"


def summarize(collapsed: str, rate: int, seconds: float) -> dict:
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[category(stack.split(";"))] += int(n)
    total = sum(counts.values())
    return {
        "samples_with_gil": total,
        "gil_held_fraction": round(total / (rate * seconds), 3),
        "share_of_gil_samples": {k: round(v / total, 3) for k, v in counts.most_common()} if total else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan-mnist")
    parser.add_argument("--frontend", default="auto", choices=FRONTENDS, help="gRPC transport")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10, help="py-spy sampling time (whole seconds)")
    parser.add_argument("--rate", type=int, default=300, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or new_output("profile_frontend")  # a new run folder each run
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    env = tools_env()
    server = start_server("--max-batch-size", "64", "--max-queue-delay-ms", "0", "--frontend", args.frontend)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = input_data(Path(tmp) / "data.json", rows=64, steps=None)
            # A window longer than the profile, so the load runs through it; perf_analyzer is
            # stopped once py-spy is done.
            load = subprocess.Popen(
                [
                    str(PERF_ANALYZER),
                    *("-m", args.model, "-i", "grpc", "-u", server.target),
                    *("--concurrency-range", f"{args.concurrency}:{args.concurrency}"),
                    *("--input-data", str(data), "--measurement-interval", str(int(args.seconds * 4000))),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(3.0)  # warm-up: batches at their steady size
            raw = args.out.with_suffix(".collapsed.txt")
            cmd = [py_spy, "record", "--gil", "-r", str(args.rate), "-d", str(args.seconds)]
            cmd += ["-f", "raw", "-o", str(raw), "--pid", str(server.proc.pid)]
            spy = subprocess.run(cmd, capture_output=True, text=True)
            if spy.returncode != 0:  # e.g. no ptrace permission: say why
                raise RuntimeError(f"py-spy failed ({spy.returncode}):\n{spy.stdout}\n{spy.stderr}")
            load.terminate()
            load.wait(timeout=30)
    finally:
        server.stop()
    report = {
        "what": f"py-spy --gil of genserve under perf_analyzer, {args.model}, concurrency {args.concurrency}",
        "frontend": args.frontend,
        "seconds": args.seconds,
        "rate_hz": args.rate,
        **summarize(raw.read_text(), args.rate, args.seconds),
        "collapsed_stacks": raw.name,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
