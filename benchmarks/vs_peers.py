"""genserve against Triton, Ray Serve and TorchServe: one closed-loop client, the same requests,
the same model work, interleaved repeats.

    bash benchmarks/peers/setup.sh all          # once: each peer in its own environment under .bench/
    python -m benchmarks.vs_peers               # the record: ~30 min on a quiet 2-core machine
    python -m benchmarks.vs_peers --quick       # ~3 min: concurrency 1 and 16, 2 s windows

Every server runs at once on this machine and serves the same ``model.onnx`` files through ONNX
Runtime on the CPU (one intra-op thread per core) behind a batcher with the same limits: max batch
64, no wait (TorchServe: its smallest wait that forms batches, 1 ms, see docs/benchmarks.md). The
peers run genserve's own ``ModelRunner`` (``benchmarks/peers/peer_models.py``), so the model work
per image is identical; before measuring, the harness asserts that every peer returns genserve's
images for the same seeds (equal bytes, or within one grey level).

The load generator is one asyncio gRPC client for all (``benchmarks/peers/clients.py``, one adapter
per API: genserve's Generate, KServe ModelInfer for Triton, the Ray Serve ingress, TorchServe's
Predictions): closed loop, one image per request, a distinct seed per request, a warmup whose
requests are not counted (``--warmup-s`` and until every worker has had a response), then a
measured window (``--window-s``, or ``WINDOW_LATENCIES`` warmup latencies when longer); requests
sent in the window are awaited and counted. Each (model, concurrency) is measured on every server
in turn, ``--repeats`` times, the server order rotated each repeat, and the medians of the repeats
are compared.

Each run writes a new folder ``benchmarks/results/runs/<date>-vs_peers[-k]/``: ``report.json``
(settings, environment, parity, every run, medians, ratios, goal verdicts), ``runs.csv``,
``medians.csv``, ``table.md``, ``plot.png`` and ``logs/`` (each peer's output).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import math
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from benchmarks import report as reporting
from benchmarks.peers import clients, launch
from benchmarks.serverproc import start_server
from benchmarks.vs_triton import medians
from genserve import images
from genserve.loadgen import OK, RequestRecord, summarize
from genserve.manifest import Manifest
from genserve.serving import native
from genserve.signature import ModelKind

SERVERS = ("genserve", "triton", "ray", "torchserve")
LABELS = {"genserve": "genserve", "triton": "Triton", "ray": "Ray Serve", "torchserve": "TorchServe"}
MODELS = ("dcgan-mnist", "ddpm-mnist")
CONCURRENCY = (1, 4, 16, 64)
QUICK = {"concurrency": (1, 16), "repeats": 2, "window_s": 2.0, "warmup_s": 0.5}
FULL = {"concurrency": CONCURRENCY, "repeats": 3, "window_s": 10.0, "warmup_s": 2.0}
# The goal at concurrency 16: genserve's throughput at least 1.5x each peer's, its p99 at most 0.7x.
GOAL = {"concurrency": 16, "throughput_ratio": 1.5, "p99_ratio": 0.7}
# A window sends for at least this many warmup latencies (median), whatever --window-s says.
WINDOW_LATENCIES = 5
PARITY_SEEDS = tuple(range(8))
MAX_GREY_LEVELS = 1  # parity: equal bytes, or at most this far apart
READY_TIMEOUT = 240.0  # s for a peer's models to answer once its process says it serves
PEER_PACKAGES = {
    "triton": ("nvidia-pytriton", "onnxruntime", "numpy", "protobuf"),
    "ray": ("ray", "onnxruntime", "numpy", "protobuf"),
    "torchserve": ("torchserve", "torch", "onnxruntime", "numpy", "protobuf"),
}


@dataclass
class Run:
    """One measurement: ``server`` at ``concurrency`` on ``model``, repeat ``repeat`` (1-based),
    ``position`` in that repeat's server order (0 = first)."""

    server: str
    model: str
    concurrency: int
    repeat: int
    position: int
    throughput: float  # OK responses (= images) per second of the window
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    ok: int
    statuses: dict[str, int]
    window_s: float  # from the window start to the last counted response
    send_s: float  # the window in which counted requests were sent
    warmup_requests: int


# ---- pure parts: order, statistics, ratios, verdicts, table (tested without servers) ----


def rotated(servers: Sequence[str], repeat: int) -> list[str]:
    """The server order of ``repeat`` (1-based): each repeat starts one server later."""
    k = (repeat - 1) % len(servers)
    return [*servers[k:], *servers[:k]]


def to_run(
    server: str,
    model: str,
    concurrency: int,
    repeat: int,
    position: int,
    records: Sequence[RequestRecord],
    window_s: float,
    send_s: float,
    warmup_requests: int,
) -> Run:
    """A measurement from its counted requests (``genserve.loadgen.summarize``), in milliseconds."""
    stats = summarize(records, duration=window_s, send_duration=send_s, num_images=1)

    def ms(key: str) -> float:
        return round(stats[key] * 1000, 3) if stats[key] is not None else float("nan")

    return Run(
        server=server,
        model=model,
        concurrency=concurrency,
        repeat=repeat,
        position=position,
        throughput=round(stats["throughput"], 3),
        mean_ms=ms("latency_mean"),
        p50_ms=ms("latency_p50"),
        p90_ms=ms("latency_p90"),
        p99_ms=ms("latency_p99"),
        requests=stats["requests"],
        ok=stats["ok"],
        statuses=stats["status_counts"],
        window_s=round(window_s, 4),
        send_s=round(send_s, 4),
        warmup_requests=warmup_requests,
    )


def ratios(by: dict[tuple[str, str, int], dict[str, float]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """genserve / peer on the medians, per peer, model and concurrency (str): throughput (higher
    is better for genserve), p99 (lower is)."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for (server, model, c), peer in sorted(by.items()):
        ours = by.get(("genserve", model, c))
        if server == "genserve" or ours is None:
            continue
        out.setdefault(server, {}).setdefault(model, {})[str(c)] = {
            "throughput_ratio": round(ours["throughput"] / peer["throughput"], 3) if peer["throughput"] else None,
            "p99_ratio": round(ours["p99_ms"] / peer["p99_ms"], 3) if peer["p99_ms"] else None,
        }
    return out


def verdicts(all_ratios: dict, models: Sequence[str], goal: dict = GOAL) -> dict[str, dict]:
    """Per peer: the goal (at ``goal['concurrency']``, on every model of ``models``) met (True),
    missed (False) or not measured (None), with the ratios it was judged on."""
    c = str(goal["concurrency"])
    out = {}
    for peer, by_model in all_ratios.items():
        per_model = {}
        for model in models:
            pair = by_model.get(model, {}).get(c)
            if pair is None or pair["throughput_ratio"] is None or pair["p99_ratio"] is None:
                per_model[model] = {"met": None}
                continue
            met = pair["throughput_ratio"] >= goal["throughput_ratio"] and pair["p99_ratio"] <= goal["p99_ratio"]
            per_model[model] = {**pair, "met": met}
        states = [v["met"] for v in per_model.values()]
        met = None if None in states else all(states)
        out[peer] = {"met": met, "models": per_model}
    return out


def goal_text(goal: dict = GOAL) -> str:
    return (
        f"at concurrency {goal['concurrency']}, on every model: genserve's throughput ≥ "
        f"{goal['throughput_ratio']}× the peer's and its p99 ≤ {goal['p99_ratio']}× the peer's"
    )


def _verdict_word(met: bool | None) -> str:
    return {True: "met", False: "missed", None: "not measured"}[met]


def markdown_table(report: dict) -> str:
    """The ratios genserve / peer per model and concurrency, then the goal per peer."""
    by = medians(report["runs"])
    lines = [
        "| model | concurrency | peer | genserve req/s | peer req/s | throughput | genserve p99 ms "
        "| peer p99 ms | p99 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    peers = [s for s in SERVERS if s in report["ratios"]]
    for model in report["settings"]["models"]:
        for c in sorted({k[2] for k in by if k[1] == model}):
            ours = by.get(("genserve", model, c))
            for peer in peers:
                theirs = by.get((peer, model, c))
                if ours is None or theirs is None:
                    continue
                pair = report["ratios"][peer][model][str(c)]
                lines.append(
                    f"| {model} | {c} | {LABELS[peer]} | {ours['throughput']:.1f} | {theirs['throughput']:.1f} "
                    f"| {_ratio(pair['throughput_ratio'])} | {ours['p99_ms']:.2f} | {theirs['p99_ms']:.2f} "
                    f"| {_ratio(pair['p99_ratio'])} |"
                )
    models = report["settings"]["models"]
    c = GOAL["concurrency"]
    lines += [
        "",
        f"Goal ({goal_text()}):",
        "",
        "| peer | " + " | ".join(f"{m} at {c}" for m in models) + " | goal |",
        "|---|" + "---|" * len(models) + "---|",
    ]
    for peer in peers:
        v = report["verdicts"][peer]
        cells = []
        for model in models:
            m = v["models"][model]
            if m["met"] is None:
                cells.append("not measured")
            else:
                cells.append(f"{_ratio(m['throughput_ratio'])} req/s, {_ratio(m['p99_ratio'])} p99")
        lines.append(f"| {LABELS[peer]} | " + " | ".join(cells) + f" | {_verdict_word(v['met'])} |")
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def parity(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far ``other``'s images are from ``reference``'s (uint8, same seeds)."""
    if reference.shape != other.shape:
        return {"identical": False, "max_abs_diff": None, "shape": list(other.shape)}
    diff = np.abs(reference.astype(np.int16) - other.astype(np.int16))
    return {"identical": bool(np.array_equal(reference, other)), "max_abs_diff": int(diff.max())}


def within_parity(result: dict) -> bool:
    return result["max_abs_diff"] is not None and result["max_abs_diff"] <= MAX_GREY_LEVELS


# ---- the measurement ----


@dataclass
class Loop:
    """What one closed-loop run saw: the counted records (sent in the window, times from its start),
    the window up to the last counted response, the send window, and the uncounted warmup."""

    records: list[RequestRecord]
    window_s: float
    send_s: float
    warmup_requests: int


async def closed_loop(
    client: clients.Client, model: str, steps: int | None, concurrency: int, warmup_s: float, window_s: float
) -> Loop:
    """``concurrency`` workers, each sending its next request when its last one returns.

    The window opens at the first response after ``warmup_s`` once every worker has had one (the
    loop is then in its steady state, even when one request takes longer than the warmup), and
    sends for ``window_s``, or for ``WINDOW_LATENCIES`` warmup latencies (median) when that is
    longer: a long request (diffusion at high concurrency) still completes several times per
    worker in the window. Requests sent in the window are awaited and counted."""
    loop = asyncio.get_running_loop()
    warmup_end = loop.time() + warmup_s
    window_start: float | None = None
    send_end = math.inf
    records: list[RequestRecord] = []
    warmup_latencies: list[float] = []
    first_responses = 0
    last_done = 0.0
    index = itertools.count()

    async def worker() -> None:
        nonlocal window_start, send_end, first_responses, last_done
        first = True
        while loop.time() < send_end:
            i = next(index)  # a distinct seed per request: no server could answer from a cache
            sent = loop.time()
            try:
                await client.generate(model, i, steps, i)
                status = OK
            except grpc.aio.AioRpcError as err:
                status = err.code().name
            done = loop.time()
            first_responses += first
            first = False
            if window_start is not None and sent >= window_start:
                records.append(RequestRecord(sent - window_start, done - sent, status))
                last_done = max(last_done, done)
                continue
            warmup_latencies.append(done - sent)
            if window_start is None and first_responses == concurrency and done >= warmup_end:
                window_start = done
                send_end = done + max(window_s, WINDOW_LATENCIES * statistics.median(warmup_latencies))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    send_s = send_end - window_start
    records.sort(key=lambda r: r.sent)
    return Loop(records, max(send_s, last_done - window_start), send_s, len(warmup_latencies))


async def wait_serving(client: clients.Client, models: Sequence[str], steps: dict, timeout: float) -> None:
    """Until every model answers one request (a peer's process serves before its models load)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for model in models:
        while True:
            try:
                await client.generate(model, 0, steps[model], timeout=30)
                break
            except grpc.aio.AioRpcError as err:
                if loop.time() > deadline:
                    raise TimeoutError(f"{client.target}: {model} never answered: {err.details()}") from err
                await asyncio.sleep(0.5)


async def measure_all(args: argparse.Namespace, targets: dict[str, str], stub_dir: Path) -> dict:
    manifests = {m: Manifest.load(launch.MODELS / m) for m in args.models}
    steps = {m: args.ddpm_steps if x.kind is ModelKind.DIFFUSION else None for m, x in manifests.items()}
    shapes = {m: (x.image_shape[1], x.image_shape[2], x.image_shape[0]) for m, x in manifests.items()}  # (H, W, C)
    pool = {s: clients.client(s, targets[s], shapes, stub_dir) for s in args.servers}
    try:
        for client in pool.values():
            await wait_serving(client, args.models, steps, READY_TIMEOUT)
        checks: dict[str, dict[str, dict]] = {}
        for model in args.models:
            reference = await pool["genserve"].images(model, PARITY_SEEDS, steps[model])
            for server in args.servers[1:]:
                result = parity(reference, await pool[server].images(model, PARITY_SEEDS, steps[model]))
                checks.setdefault(server, {})[model] = result
                print(f"parity {server:10s} {model:12s} {result}", flush=True)
        bad = {s: {m: r for m, r in by.items() if not within_parity(r)} for s, by in checks.items()}
        bad = {s: by for s, by in bad.items() if by}
        if bad:
            raise RuntimeError(f"peers differ from genserve by more than {MAX_GREY_LEVELS} grey level: {bad}")
        runs: list[Run] = []
        points = list(itertools.product(args.models, args.concurrency, range(1, args.repeats + 1)))
        total = len(points) * len(args.servers)
        for model, c, repeat in points:
            for position, server in enumerate(rotated(args.servers, repeat)):
                seen = await closed_loop(pool[server], model, steps[model], c, args.warmup_s, args.window_s)
                run = to_run(
                    server, model, c, repeat, position, seen.records, seen.window_s, seen.send_s, seen.warmup_requests
                )
                runs.append(run)
                reporting.progress(
                    len(runs),
                    total,
                    f"{server:10s} {model:12s} c={c:3d} #{repeat} {run.throughput:8.1f} req/s "
                    f"p50 {run.p50_ms:8.2f} ms p99 {run.p99_ms:8.2f} ms {run.statuses}",
                )
        return {"parity": checks, "runs": runs}
    finally:
        for client in pool.values():
            await client.close()


def peer_versions(server: str) -> dict:
    """Python and package versions inside a peer's environment."""
    names = PEER_PACKAGES[server]
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(p):\n try: return m.version(p)\n except m.PackageNotFoundError: return None\n"
        f"print(json.dumps({{'python': sys.version.split()[0], 'packages': {{p: v(p) for p in {names!r}}}}}))"
    )
    out = subprocess.run([str(launch.PYTHON[server]), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}


def java_version() -> str | None:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return None
    return (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else None


def start_peers(args: argparse.Namespace, workdir: Path, stub_dir: Path) -> dict[str, launch.PeerProcess]:
    started: dict[str, launch.PeerProcess] = {}
    try:
        for server in args.servers[1:]:
            print(f"starting {server}", file=sys.stderr, flush=True)
            if server == "triton":
                started[server] = launch.triton(args.models, args.max_batch_size, args.max_queue_delay_ms)
            elif server == "ray":
                started[server] = launch.ray(
                    args.models, args.max_batch_size, args.max_queue_delay_ms, stub_dir, workdir / "ray"
                )
            elif server == "torchserve":
                started[server] = launch.torchserve(
                    args.models, args.max_batch_size, args.torchserve_max_batch_delay_ms, workdir / "torchserve"
                )
    except BaseException:
        for peer in started.values():
            peer.stop()
        raise
    return started


def settings(args: argparse.Namespace) -> dict:
    return {
        "servers": list(args.servers),
        "models": list(args.models),
        "concurrency": list(args.concurrency),
        "repeats": args.repeats,
        "window_s": args.window_s,
        "warmup_s": args.warmup_s,
        "ddpm_steps": args.ddpm_steps,
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "torchserve_max_batch_delay_ms": args.torchserve_max_batch_delay_ms,
        "genserve_frontend": args.genserve_frontend,
        "genserve_native_transport_built": native.available(),
        "quick": args.quick,
        "goal": GOAL,
        "parity_seeds": list(PARITY_SEEDS),
        "load_generator": f"benchmarks.peers.clients, asyncio gRPC, closed loop, {clients.CHANNELS} channels, "
        "1 image per request, distinct seeds",
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(report: dict, path: Path) -> Path:
    models = report["settings"]["models"]
    by = medians(report["runs"])
    with images.saved_figure(path, 2, len(models), figsize=(5.5 * len(models), 7.5), squeeze=False) as (fig, axes):
        for j, model in enumerate(models):
            for server in report["settings"]["servers"]:
                points = sorted((c, m) for (s, name, c), m in by.items() if s == server and name == model)
                if not points:
                    continue
                cs = [p[0] for p in points]
                axes[0][j].plot(cs, [p[1]["throughput"] for p in points], "o-", label=LABELS[server])
                axes[1][j].plot(cs, [p[1]["p99_ms"] for p in points], "o-", label=LABELS[server])
            axes[0][j].set_title(f"{model}: throughput (median of repeats)")
            axes[0][j].set_ylabel("requests (= images) / s")
            axes[1][j].set_title(f"{model}: p99 latency (median of repeats)")
            axes[1][j].set_ylabel("ms")
            axes[1][j].set_yscale("log")
            concurrency = report["settings"]["concurrency"]
            for ax in (axes[0][j], axes[1][j]):
                ax.set_xscale("log", base=2)
                ax.set_xticks(concurrency, [str(c) for c in concurrency])
                ax.tick_params(axis="x", which="minor", bottom=False)
                ax.set_xlabel("concurrency (closed loop)")
                ax.legend()
                ax.grid(alpha=0.3)
        quick = " (--quick)" if report["settings"]["quick"] else ""
        fig.suptitle(f"genserve and its peers, same ONNX models, ONNX Runtime on the CPU{quick}")
    return path


def write_folder(folder: Path, report: dict, logs: dict[str, list[str]]) -> str:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_csv(folder / "runs.csv", [{**r, "statuses": json.dumps(r["statuses"])} for r in report["runs"]])
    rows = [{"server": s, "model": m, "concurrency": c, **v} for (s, m, c), v in medians(report["runs"]).items()]
    write_csv(folder / "medians.csv", rows)
    table = markdown_table(report)
    (folder / "table.md").write_text(table)
    plot(report, folder / "plot.png")
    (folder / "logs").mkdir(exist_ok=True)
    for server, lines in logs.items():
        (folder / "logs" / f"{server}.log").write_text("".join(lines))
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a short check: {QUICK}")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--concurrency", nargs="+", type=int, help=f"default {FULL['concurrency']}")
    parser.add_argument("--repeats", type=int, help=f"interleaved measurements per point; default {FULL['repeats']}")
    parser.add_argument("--window-s", type=float, help=f"measured seconds per run; default {FULL['window_s']}")
    parser.add_argument("--warmup-s", type=float, help=f"uncounted seconds before each; default {FULL['warmup_s']}")
    parser.add_argument("--ddpm-steps", type=int, default=20, help="steps of each diffusion request")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0, help="genserve, Triton and Ray Serve")
    parser.add_argument(
        "--torchserve-max-batch-delay-ms",
        type=int,
        default=1,
        help="TorchServe's maxBatchDelay: with 0 its aggregator stops after the second request of a batch",
    )
    parser.add_argument(
        "--genserve-frontend", default="auto", choices=("auto", "native", "grpcio"), help="genserve serve --frontend"
    )
    parser.add_argument(
        "--results", type=Path, default=reporting.RUNS, help="where the run's new folder goes (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.servers[0] != "genserve":
        if "genserve" not in args.servers:
            parser.error("--servers must include genserve (the baseline of every ratio)")
        args.servers = ["genserve", *[s for s in args.servers if s != "genserve"]]
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for server in args.servers[1:]:
        try:
            launch.require(server)
        except launch.NotInstalled as exc:
            raise SystemExit(str(exc)) from None

    environment = reporting.environment(("grpcio", "onnxruntime", "numpy", "protobuf", "tritonclient"))
    environment["peers"] = {s: peer_versions(s) for s in args.servers[1:]}
    environment["java"] = java_version() if "torchserve" in args.servers else None
    batching = ["--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms)]
    batching += ["--frontend", args.genserve_frontend]
    with tempfile.TemporaryDirectory(prefix="genserve-vs-peers-") as tmp:
        workdir = Path(tmp)
        stub_dir = clients.generate_stubs(workdir / "stubs")
        genserve = start_server(*batching)
        peers: dict[str, launch.PeerProcess] = {}
        try:
            peers = start_peers(args, workdir, stub_dir)
            targets = {"genserve": genserve.target, **{s: p.target for s, p in peers.items()}}
            measured = asyncio.run(measure_all(args, targets, stub_dir))
        finally:
            genserve.stop()
            for peer in peers.values():
                peer.stop()
    runs = [asdict(r) for r in measured["runs"]]
    by = medians(runs)
    all_ratios = ratios(by)
    report = {
        "benchmark": "vs_peers",
        "created": reporting.created(),
        "settings": settings(args),
        "environment": environment,
        "parity": measured["parity"],
        "runs": runs,
        "medians": [{"server": s, "model": m, "concurrency": c, **v} for (s, m, c), v in by.items()],
        "ratios": all_ratios,
        "verdicts": verdicts(all_ratios, args.models),
    }
    folder = reporting.run_folder("vs_peers", args.results)
    table = write_folder(folder, report, {s: p.log for s, p in peers.items()})
    print(table)
    print(f"wrote {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
