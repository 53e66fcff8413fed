"""genserve at another commit against the working tree, on this machine, in one run: the same
perf_analyzer load on a server from each, interleaved, so a change's cost or gain is a ratio
measured under the same conditions rather than against a file from another day.

    bash benchmarks/peers/setup.sh perf                     # once: perf_analyzer
    python -m benchmarks.ab --before 39299fb                # ~3 min; a new results/runs/<date>-ab/

The other commit is checked out as a git worktree (``.bench/ab-<commit>``, kept for the next run)
with its own native transport built; its server runs on this virtualenv's packages with
``genserve`` imported from the worktree (the editable install's path mapping, redirected by a
small launcher), so only genserve's own code differs. Both servers get the same models (this
tree's ``models/``) and batcher settings (max batch 64, delay 0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from benchmarks import report
from benchmarks.serverproc import start_server
from benchmarks.vs_triton import compare, measure_interleaved, medians, tools_env

LAUNCHER = '''"""Run genserve's CLI with the package imported from the folder given first (benchmarks/ab.py)."""
import glob, os, sys, sysconfig, importlib
root = sys.argv.pop(1)
finders = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "__editable___genserve_*_finder.py"))
if not finders:
    sys.exit("benchmarks/ab.py needs genserve installed in editable mode (pip install -e .)")
finder = importlib.import_module(os.path.basename(finders[0])[:-3])
for name in list(finder.MAPPING):
    finder.MAPPING[name] = os.path.join(root, os.path.relpath(finder.MAPPING[name], finder.MAPPING["genserve"] + "/.."))
from genserve.cli import main
sys.exit(main())
'''


def worktree(rev: str) -> Path:
    """A worktree of ``rev`` under .bench/, with its native transport built (once)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=report.ROOT, capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"no such commit: {rev}")
    sha = commit.stdout.strip()
    path = report.ROOT / ".bench" / f"ab-{sha[:12]}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=report.ROOT, check=True)
    if not list((path / "serving" / "native").glob("_frontend*.so")):
        subprocess.run(["bash", "serving/native/build.sh", sys.executable], cwd=path, check=True)
    (path / "_ab_launch.py").write_text(LAUNCHER)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--model", default="dcgan-mnist")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement interval")
    parser.add_argument("--frontend", default="native", choices=["native", "grpcio"])
    args = parser.parse_args()
    env = tools_env()
    before = worktree(args.before)
    folder = report.run_folder("ab")
    environment = report.environment()
    settings = ("--models", str(report.ROOT / "models"), "--max-batch-size", "64", "--max-queue-delay-ms", "0")
    settings += ("--frontend", args.frontend)
    commands = {"before": [sys.executable, str(before / "_ab_launch.py"), str(before)], "after": None}
    servers = {}
    try:
        for name, command in commands.items():
            servers[name] = start_server(*settings, command=command)
        targets = {name: server.target for name, server in servers.items()}
        runs = measure_interleaved(targets, args.model, args.concurrency, args.repeats, folder, args.window_ms, env)
    finally:
        for server in servers.values():
            server.stop()
    by = medians([asdict(r) for r in runs])
    summary = {str(c): compare(by, args.model, c, "after", "before") for c in args.concurrency}
    for c in args.concurrency:
        print(
            f"c={c}: after/before throughput {summary[str(c)]['throughput_ratio']:.3f}x, "
            f"p99 {summary[str(c)]['p99_ratio']:.3f}x (medians of {args.repeats})"
        )
    result = {
        "benchmark": "ab",
        "created": report.created(),
        "before": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=before, capture_output=True, text=True
        ).stdout.strip()
        or args.before,
        "after": "the working tree at environment.git_commit (plus environment.git_dirty_files)",
        "environment": environment,
        "settings": {
            "model": args.model,
            "frontend": args.frontend,
            "max_batch_size": 64,
            "max_queue_delay_ms": 0,
            "repeats": args.repeats,
            "window_ms": args.window_ms,
            "load_generator": "perf_analyzer, KServe gRPC, closed loop",
        },
        "median_by_concurrency": summary,
        "runs": [asdict(r) for r in runs],
    }
    (folder / "ab.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
