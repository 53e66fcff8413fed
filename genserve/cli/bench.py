"""``genserve bench``: load against a running server (``bench load``).

The repository's own benchmarks (the sampler loops, the batching and transport sweeps, ...) are not
verbs: they live in ``benchmarks/`` and run from a checkout, e.g. ``python -m benchmarks.sampler``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from genserve.cli import connect
from genserve.cli.defaults import DEFAULT_SERVER

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmark a running server: closed- or open-loop load, throughput and latency",
        description="Load against a running server (bench load). The repository's own benchmarks are "
        "scripts in a checkout's benchmarks/ folder (python -m benchmarks.sampler, ...), not verbs.",
    )
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
    p.add_argument(
        "--no-retry", action="store_true", help="count UNAVAILABLE as it happens instead of retrying it (default retry)"
    )
    connect.add_arguments(p)
    p.set_defaults(func=_bench_load)


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
            credentials=connect.credentials(args),
            retry=not args.no_retry,
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
