"""``genserve bench``: load against a running server (``bench load``), sampler loops in-process (``bench sampler``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from genserve.cli.defaults import DEFAULT_MODELS, DEFAULT_SERVER, REPO_ROOT

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: load against a running server, sampler loops in-process")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser(
        "load",
        help="drive a server with closed-loop or open-loop (Poisson) load; report throughput and latency",
        description="Closed loop (--concurrency N): N workers, each sending its next request when the last "
        "is answered. Open loop (--rate R): Poisson arrivals at R requests/s, however many are outstanding. "
        "Requests sent during --warmup are not counted; those in flight at the end are awaited and counted.",
    )
    p.add_argument(
        "--server", default=DEFAULT_SERVER, metavar="HOST:PORT", help=f"the server (default {DEFAULT_SERVER})"
    )
    p.add_argument("--model", required=True, metavar="NAME", help="a name from `genserve models`")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, metavar="N", help="closed loop: requests outstanding at all times")
    load.add_argument("--rate", type=float, metavar="R", help="open loop: mean arrivals per second (Poisson)")
    p.add_argument(
        "--duration", type=float, required=True, metavar="S", help="seconds of measured load, after the warmup"
    )
    p.add_argument("-n", "--num-images", type=int, default=1, metavar="K", help="images per request (default 1)")
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        metavar="K",
        help="diffusion steps; several are used in turn (default: the model's)",
    )
    p.add_argument("--timeout-ms", type=float, metavar="T", help="server-side deadline of each request (default none)")
    p.add_argument(
        "--priority", type=int, default=0, metavar="P", help="queue priority level, 1 = first (default 0: the model's)"
    )
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="seconds of uncounted load first (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the open-loop arrival times (default 0)")
    p.add_argument(
        "--json", type=Path, metavar="OUT.json", help="write the report (statistics and per-second timeline) as JSON"
    )
    p.add_argument(
        "--plot", type=Path, metavar="OUT.png", help="write a PNG of latency by send time and per-second throughput"
    )
    p.set_defaults(func=_bench_load)

    p = bench_sub.add_parser(
        "sampler",
        help="images/s of the fused sampler vs diffusers' DDPMScheduler loop and Algorithm 2 (in-process)",
        description="Time three DDPM sampling loops on the same UNet weights, batch, step count and threads: "
        "Hugging Face diffusers' DDPMScheduler loop and a literal Ho et al. Algorithm 2 loop (both PyTorch eager), "
        "and genserve's fused ONNX step loop as served; then the median of one bare engine step, for the "
        "fused loop's overhead. Needs the optional extra: pip install -e '.[bench]'.",
    )
    p.add_argument("--model", default="ddpm-mnist", metavar="NAME", help="diffusion model folder (default ddpm-mnist)")
    p.add_argument("--models", type=Path, metavar="DIR", help=f"model repository (default {DEFAULT_MODELS})")
    p.add_argument("--batch", type=int, default=16, metavar="B", help="images per loop (default 16)")
    p.add_argument(
        "--steps", type=int, default=1000, metavar="K", help="sampling steps (default 1000, the full schedule)"
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch and onnxruntime intra-op threads (default: os.cpu_count())"
    )
    p.add_argument(
        "--rounds", type=int, default=3, metavar="R", help="interleaved timings of each loop; medians kept (default 3)"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "sampler.json",
        metavar="OUT.json",
        help="report path; the bar chart goes next to it as OUT.png (default benchmarks/results/sampler.json)",
    )
    p.set_defaults(func=_bench_sampler)


def _bench_load(args: argparse.Namespace) -> int:
    from genserve.loadgen import LoadSpec, plot_report, run_load

    try:
        spec = LoadSpec(
            args.server,
            args.model,
            concurrency=args.concurrency,
            rate=args.rate,
            duration=args.duration,
            num_images=args.num_images,
            steps=None if not args.steps else args.steps[0] if len(args.steps) == 1 else tuple(args.steps),
            timeout_ms=args.timeout_ms,
            priority=args.priority,
            warmup=args.warmup,
            seed=args.seed,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        report = run_load(spec, progress=True)
    except ConnectionError as exc:
        log.error("%s", exc)
        return 1
    print(report.summary())
    if args.json:
        print(f"wrote {report.write_json(args.json)}")
    if args.plot:
        print(f"wrote {plot_report(report, args.plot)}")
    return 0


def _bench_sampler(args: argparse.Namespace) -> int:
    from genserve.bench_sampler import SamplerBenchConfig, plot_report, run_sampler_benchmark, summary, write_report

    folder = (args.models or DEFAULT_MODELS) / args.model
    try:
        threads = {"threads": args.threads} if args.threads else {}  # default: os.cpu_count()
        config = SamplerBenchConfig(folder, batch=args.batch, steps=args.steps, rounds=args.rounds, **threads)
        report = run_sampler_benchmark(config)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    except ImportError as exc:  # diffusers, the optional [bench] extra
        log.error("%s", exc)
        return 1
    print(summary(report))
    print(f"wrote {write_report(report, args.json)}")
    print(f"wrote {plot_report(report, args.json.with_suffix('.png'))}")
    return 0
