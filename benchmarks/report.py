"""What every benchmark report carries and how it is written: the machine it ran on, the JSON
under benchmarks/results/, its plot next to it, and its markdown table on stdout.

Runs that keep their evidence write into a new folder each time (``run_folder``):
``benchmarks/results/runs/<date>-<benchmark>[-k]/``, never one that exists, with
``environment()`` (the machine, its load before the run, the versions and the git commit).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "results" / "runs"


def machine() -> dict[str, Any]:
    """The machine and how busy it was when the run started (1-minute load average)."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def progress(i: int, total: int, message: str) -> None:
    """``[i/total] message`` on stderr, at once (long runs show where they are)."""
    print(f"[{i}/{total}] {message}", file=sys.stderr, flush=True)


def created() -> str:
    """The report's timestamp, UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write(result: dict[str, Any], path: Path, draw: Callable[[Path], Path], table: str) -> None:
    """``result`` as JSON at ``path``, ``draw(path.png)``, then ``table`` on stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    png = draw(path.with_suffix(".png"))
    print(table)
    print(f"wrote {path} and {png}", file=sys.stderr)


def run_folder(benchmark: str, root: Path = RUNS, today: dt.date | None = None) -> Path:
    """A new ``root/<date>-<benchmark>`` (``-2``, ``-3``... when it exists): a run never rewrites another's files."""
    base = f"{(today or dt.date.today()).isoformat()}-{benchmark}"
    folder, k = root / base, 1
    while folder.exists():
        k += 1
        folder = root / f"{base}-{k}"
    folder.mkdir(parents=True)
    return folder


def environment(packages: Iterable[str] = ("grpcio", "onnxruntime", "numpy", "protobuf")) -> dict[str, Any]:
    """The machine, its load average before the run, Python and package versions, the git commit."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.rstrip("\n")  # porcelain lines start with a space: keep it

    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "packages": versions,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": git("status", "--porcelain", "--untracked-files=no").splitlines(),
    }


def new_output(benchmark: str, suffix: str = ".json") -> Path:
    """The report path of a run that was given no output path: ``<new run folder>/<benchmark>.json``,
    with the environment before the run beside it (``environment.json``)."""
    folder = run_folder(benchmark)
    (folder / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
    return folder / f"{benchmark}{suffix}"
