"""What every benchmark report carries and how it is written: the machine it ran on, the JSON
under benchmarks/results/, its plot next to it, and its markdown table on stdout."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


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
