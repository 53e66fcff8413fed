"""genserve against NVIDIA Triton, side by side, with Triton's own load generator.

    bash benchmarks/peers/setup.sh triton perf  # once each: Triton (pytriton), perf_analyzer into .bench/
    python -m benchmarks.vs_triton          # ~20 min; a new benchmarks/results/runs/<date>-vs_triton/
    python -m benchmarks.vs_triton --servers genserve   # perf_analyzer sweep against genserve only

Both servers run at once on this machine and serve the same ``model.onnx`` files through ONNX
Runtime (same intra-op threads) behind a dynamic batcher with the same limits (max batch size 64,
queue delay 0 unless told otherwise); Triton runs genserve's own ModelRunner inside its Python
model (``benchmarks/peers/peer_models.py``), so the model work per image is identical and only the
serving layers differ. Before measuring, one call to each server checks that they return the same
bytes for the same seeds. ``benchmarks.vs_peers`` compares more peers with one client of its own.

perf_analyzer (closed loop, gRPC, one row per request) measures each (model, concurrency) on
genserve and then on Triton, interleaved, ``--repeats`` times (3), so drifts in machine load hit
both alike; the table and the ratios compare the medians of the repeats, since a single
measurement here moves by about 10% from one run to the next (either server). Each run writes a
new folder (``report.run_folder``): ``report.json`` (settings, ``report.environment()``, runs,
ratios), ``table.md``, ``plot.png`` and ``perf/`` (perf_analyzer's CSV per run); the server-side
queue and compute columns come from each server's ModelStatistics.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks import report as reporting
from benchmarks.peers import launch
from benchmarks.serverproc import start_server
from genserve import images

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BENCH = ROOT / ".bench"
# An unstable point is measured again with twice the window, up to this (4x the default 4 s).
MAX_WINDOW_MS = 16_000
PERF_ANALYZER = BENCH / "perf" / "bin" / "perf_analyzer"
CONCURRENCY = (1, 4, 16, 64)
SERVERS = ("genserve", "triton")


@dataclass
class Run:
    server: str
    model: str
    concurrency: int
    throughput: float  # requests (= images) per second
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    server_queue_ms: float  # mean per request, from the server's statistics
    server_compute_ms: float
    csv: str  # path relative to benchmarks/results (absolute when the run folder is elsewhere)
    window_ms: int = 0  # the perf_analyzer measurement window that gave a stable measurement
    repeat: int = 1  # which of the --repeats measurements of this (server, model, concurrency)


def tools_env() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even on CPU: the wheel's copy goes on the library path."""
    libs = sorted(BENCH.glob("perf/lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    if not PERF_ANALYZER.exists() or not libs:
        raise SystemExit("perf_analyzer is not installed: run `bash benchmarks/peers/setup.sh` first")
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(str(p) for p in libs)}


def start_triton(models: list[str], max_batch_size: int, max_queue_delay_ms: float) -> launch.PeerProcess:
    """benchmarks/peers/triton_server.py as a child process (``launch.triton``), its models ready."""
    try:
        triton = launch.triton(models, max_batch_size, max_queue_delay_ms)
    except launch.NotInstalled as exc:
        raise SystemExit(str(exc)) from None
    try:
        wait_ready(triton.target, models)
    except BaseException:
        triton.stop()
        raise
    return triton


def wait_ready(target: str, models: list[str], timeout: float = 120.0) -> None:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(target)
    deadline = time.monotonic() + timeout
    while not all(_ready(client, m) for m in models):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} never reported {models} ready")
        time.sleep(0.2)


def _ready(client, model: str) -> bool:
    try:
        return client.is_model_ready(model)
    except Exception:
        return False


def infer_images(target: str, model: str, seeds: list[int], steps: int | None) -> np.ndarray:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(target)
    inputs = [_tensor("SEED", np.asarray(seeds, np.int64).reshape(-1, 1), "INT64")]
    if steps is not None:
        inputs.append(_tensor("STEPS", np.full((len(seeds), 1), steps, np.int32), "INT32"))
    return client.infer(model, inputs).as_numpy("IMAGE")


def _tensor(name: str, data: np.ndarray, datatype: str):
    import tritonclient.grpc as triton

    t = triton.InferInput(name, list(data.shape), datatype)
    t.set_data_from_numpy(data)
    return t


def input_data(path: Path, steps: int | None, rows: int = 64) -> Path:
    """perf_analyzer's --input-data: distinct seeds, and the fixed step count for diffusion."""
    data = []
    for seed in range(rows):
        row = {"SEED": [seed]}
        if steps is not None:
            row["STEPS"] = [steps]
        data.append(row)
    path.write_text(json.dumps({"data": data}))
    return path


def perf_analyzer(
    target: str,
    model: str,
    concurrency: int,
    data: Path,
    out_csv: Path,
    window_ms: int,
    env: dict,
    stability_percent: int = 25,
    max_trials: int = 8,
    extra: Sequence[str] = (),
) -> dict[str, str]:
    """One closed-loop perf_analyzer run over gRPC; its CSV row (the CSV is kept at ``out_csv``).
    ``extra``: more perf_analyzer flags (TLS)."""
    cmd = [
        str(PERF_ANALYZER),
        *("-m", model, "-i", "grpc", "-u", target),
        *("--concurrency-range", f"{concurrency}:{concurrency}"),
        *("--input-data", str(data), "--measurement-interval", str(window_ms)),
        *("--stability-percentage", str(stability_percent), "--max-trials", str(max_trials)),
        *("-f", str(out_csv)),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0 and "Failed to obtain stable measurement" in proc.stdout and window_ms < MAX_WINDOW_MS:
        # Long diffusion requests at high concurrency: few completions per window, so the windows
        # disagree by more than the stability bound. A longer window is what perf_analyzer advises.
        print(f"  {target} {model} c={concurrency}: not stable in {window_ms} ms windows, again with {2 * window_ms}")
        return perf_analyzer(
            target, model, concurrency, data, out_csv, 2 * window_ms, env, stability_percent, max_trials, extra
        )
    if proc.returncode != 0 or not out_csv.exists():
        raise RuntimeError(f"perf_analyzer failed on {target} {model} c={concurrency}:\n{proc.stdout}\n{proc.stderr}")
    with out_csv.open() as f:
        return {**next(csv.DictReader(f)), "window_ms": str(window_ms)}


def measure(
    server: str,
    target: str,
    model: str,
    concurrency: int,
    repeat: int,
    data: Path,
    out: Path,
    window_ms: int,
    env: dict,
    extra: Sequence[str] = (),
) -> Run:
    """Measurement ``repeat`` of ``server`` (at ``target``) by perf_analyzer, printed as it lands."""
    row = perf_analyzer(target, model, concurrency, data, out, window_ms, env, extra=extra)
    run = replace(to_run(server, model, concurrency, row, out), repeat=repeat)
    print(
        f"{server:9s} {model:12s} c={concurrency:3d} #{repeat} {run.throughput:8.1f} req/s"
        f"  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms"
        f"  queue {run.server_queue_ms:6.2f}  compute {run.server_compute_ms:6.2f}",
        flush=True,
    )
    return run


def to_run(server: str, model: str, concurrency: int, row: dict[str, str], csv_path: Path) -> Run:
    us = 1e-3

    def ms(key: str) -> float:
        return float(row[key]) * us

    return Run(
        server=server,
        model=model,
        concurrency=concurrency,
        throughput=float(row["Inferences/Second"]),
        avg_ms=sum(
            ms(k)
            for k in (
                "Client Send",
                "Network+Server Send/Recv",
                "Server Queue",
                "Server Compute Input",
                "Server Compute Infer",
                "Server Compute Output",
                "Client Recv",
            )
        ),
        p50_ms=ms("p50 latency"),
        p90_ms=ms("p90 latency"),
        p95_ms=ms("p95 latency"),
        p99_ms=ms("p99 latency"),
        server_queue_ms=ms("Server Queue"),
        server_compute_ms=ms("Server Compute Infer"),
        csv=str(csv_path.relative_to(RESULTS) if csv_path.is_relative_to(RESULTS) else csv_path),
        window_ms=int(row.get("window_ms", 0)),
    )


def sweep(args: argparse.Namespace, folder: Path) -> dict:
    """The measurements, their perf_analyzer CSVs under ``folder/perf``."""
    env = tools_env()
    environment = reporting.environment(("grpcio", "onnxruntime", "numpy", "protobuf", "tritonclient"))
    perf_dir = folder / "perf"
    perf_dir.mkdir(parents=True, exist_ok=True)
    batching = ["--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms)]
    runs: list[Run] = []
    identical: dict[str, bool] = {}
    genserve = start_server(*batching)
    triton = None
    try:
        targets = {"genserve": genserve.target}
        if "triton" in args.servers:
            triton = start_triton(args.models, args.max_batch_size, args.max_queue_delay_ms)
            targets["triton"] = triton.target
        for model in args.models:
            steps = args.ddpm_steps if model.startswith("ddpm") else None
            results = {s: infer_images(t, model, [1, 2, 3], steps) for s, t in targets.items()}
            identical[model] = all(np.array_equal(results["genserve"], r) for r in results.values())
            data = input_data(perf_dir / f"{model}-input.json", steps)
            for c, repeat, server in itertools.product(args.concurrency, range(1, args.repeats + 1), args.servers):
                # interleaved: each measurement of a concurrency on every server in turn
                out = perf_dir / f"{server}-{model}-c{c}-r{repeat}.csv"
                runs.append(measure(server, targets[server], model, c, repeat, data, out, args.window_ms, env))
    finally:
        genserve.stop()
        if triton is not None:
            triton.stop()
    return {
        "benchmark": "vs_triton",
        "created": reporting.created(),
        "environment": environment,
        "settings": {
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_ms": args.max_queue_delay_ms,
            "ddpm_steps": args.ddpm_steps,
            "window_ms": args.window_ms,
            "repeats": args.repeats,
            "load_generator": "perf_analyzer 2.48.0, gRPC, closed loop, 1 row per request",
        },
        "identical_outputs": identical,
        "runs": [asdict(r) for r in runs],
        "ratios": ratios(runs) if "triton" in args.servers else {},
    }


def medians(runs: Sequence[dict]) -> dict[tuple[str, str, int], dict[str, float]]:
    """(server, model, concurrency) -> the medians of its repeats: throughput, p50, p99."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["server"], r["model"], r["concurrency"]), []).append(r)
    return {
        key: {
            "throughput": statistics.median(r["throughput"] for r in rows),
            "p50_ms": statistics.median(r["p50_ms"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
            "repeats": len(rows),
        }
        for key, rows in groups.items()
    }


def ratios(runs: list[Run]) -> dict[str, dict[str, dict[str, float]]]:
    """genserve / Triton per model and concurrency, on the medians of the repeats: throughput
    (higher is better), p99 (lower)."""
    by = medians([asdict(r) for r in runs])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (server, model, c), g in by.items():
        t = by.get(("triton", model, c))
        if server != "genserve" or t is None:
            continue
        out.setdefault(model, {})[str(c)] = ratio(g, t)
    return out


def ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """``a`` against ``b``, two entries of ``medians``: throughput (higher is better), p99 (lower)."""
    return {
        "throughput_ratio": round(a["throughput"] / b["throughput"], 3),
        "p99_ratio": round(a["p99_ms"] / b["p99_ms"], 3),
    }


def compare(by: dict, model: str, concurrency: int, a: str, b: str) -> dict[str, float]:
    """Server ``a`` against server ``b`` at one concurrency, from ``medians``: both throughputs and
    p99s, and their ratios."""
    x, y = by[(a, model, concurrency)], by[(b, model, concurrency)]
    return {
        f"{a}_req_s": round(x["throughput"], 1),
        f"{b}_req_s": round(y["throughput"], 1),
        f"{a}_p99_ms": round(x["p99_ms"], 2),
        f"{b}_p99_ms": round(y["p99_ms"], 2),
        **ratio(x, y),
    }


def measure_interleaved(
    targets: dict[str, str],
    model: str,
    concurrencies: Sequence[int],
    repeats: int,
    folder: Path,
    window_ms: int,
    env: dict,
    extra: Sequence[str] = (),
) -> list[Run]:
    """perf_analyzer on each server of ``targets`` (name -> HOST:PORT) in turn, at each concurrency,
    ``repeats`` times, interleaved so that drifts in machine load hit them alike; CSVs in ``folder``."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = input_data(Path(tmp) / "input.json", steps=None)
        plan = list(itertools.product(concurrencies, range(1, repeats + 1), targets))
        for i, (c, repeat, name) in enumerate(plan, 1):
            reporting.progress(i, len(plan), f"{name} c={c} #{repeat}")
            out = folder / f"perf-{name}-{model}-c{c}-r{repeat}.csv"
            runs.append(measure(name, targets[name], model, c, repeat, data, out, window_ms, env, extra))
    return runs


def markdown_table(report: dict) -> str:
    lines = [
        "| model | concurrency | genserve req/s | Triton req/s | throughput ratio "
        "| genserve p99 ms | Triton p99 ms | p99 ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = medians(report["runs"])
    for (server, model, c), g in by.items():
        t = by.get(("triton", model, c))
        if server != "genserve" or t is None:
            continue
        pair = report["ratios"][model][str(c)]
        lines.append(
            f"| {model} | {c} | {g['throughput']:.1f} | {t['throughput']:.1f} | {pair['throughput_ratio']:.2f}× "
            f"| {g['p99_ms']:.2f} | {t['p99_ms']:.2f} | {pair['p99_ratio']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    models = list(dict.fromkeys(r["model"] for r in report["runs"]))
    with images.saved_figure(path, 2, len(models), figsize=(5 * len(models), 7), squeeze=False) as (fig, axes):
        by = medians(report["runs"])
        for j, model in enumerate(models):
            for server in SERVERS:
                points = sorted((c, m) for (s, name, c), m in by.items() if s == server and name == model)
                if not points:
                    continue
                c = [p[0] for p in points]
                axes[0][j].plot(c, [p[1]["throughput"] for p in points], "o-", label=server)
                axes[1][j].plot(c, [p[1]["p99_ms"] for p in points], "o-", label=server)
            axes[0][j].set_title(f"{model}: throughput")
            axes[0][j].set_ylabel("requests/s")
            axes[1][j].set_title(f"{model}: p99 latency")
            axes[1][j].set_ylabel("ms")
            for ax in (axes[0][j], axes[1][j]):
                ax.set_xscale("log", base=2)
                ax.set_xlabel("concurrency (perf_analyzer)")
                ax.legend()
                ax.grid(alpha=0.3)
        fig.suptitle("genserve vs NVIDIA Triton (pytriton), same ONNX models, CPU")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dcgan-mnist", "ddpm-mnist"])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(CONCURRENCY))
    parser.add_argument("--ddpm-steps", type=int, default=10, help="STEPS sent to diffusion models")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement interval")
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements per point and server, interleaved; medians are compared"
    )
    parser.add_argument(
        "--results", type=Path, default=reporting.RUNS, help="where the run's new folder goes (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if "genserve" not in args.servers:
        parser.error("--servers must include genserve (the baseline of every ratio)")
    folder = reporting.run_folder("vs_triton", args.results)
    print(f"writing into {folder}", file=sys.stderr, flush=True)
    report = sweep(args, folder)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if report["ratios"]:
        table = markdown_table(report)
        (folder / "table.md").write_text(table)
        print(table)
    plot(report, folder / "plot.png")
    print(f"wrote {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
