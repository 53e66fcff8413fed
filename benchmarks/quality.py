"""End-to-end quality of the bundled models, exactly as a user gets them: start the server,
``genserve generate -n 100`` through the real CLI and gRPC, then judge the images with the
evaluation classifier. Writes a new run folder's quality.json (or --json) and docs/samples/<model>.png."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import new_output
from benchmarks.serverproc import GENSERVE, start_server
from genserve import images
from genserve.training import EVAL_SEED
from genserve.training.evaluate import Evaluator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
THRESHOLDS = {"ddpm-mnist": 3.0, "dcgan-mnist": 6.0}  # max FID / real-vs-real floor (foundation issue)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=sorted(THRESHOLDS))
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--steps", type=int, help="diffusion steps (default: the model's, 1000 for ddpm-mnist)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, help="also keep each model's samples as DIR/<model>.npy")
    args = parser.parse_args()
    args.json = args.json or new_output("quality")  # a new run folder each run

    evaluator = Evaluator()
    server = start_server()
    print(f"server SERVING after {server.serving_after:.2f} s on {server.target}", flush=True)
    results, ok = {}, True
    try:
        for name in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / f"{name}.npy"
                cmd = [str(GENSERVE), "generate", "--server", server.target, "--model", name]
                cmd += ["-n", str(args.n), "--seed", str(args.seed), "--out", str(out)]
                if args.steps and name.startswith("ddpm"):
                    cmd += ["--steps", str(args.steps)]
                t0 = time.monotonic()
                subprocess.run(cmd, check=True)
                seconds = time.monotonic() - t0
                samples = np.load(out)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    np.save(args.keep / f"{name}.npy", samples)
            report = evaluator.evaluate(samples).to_dict()
            limit = THRESHOLDS.get(name)
            passed = (
                report["confident_fraction"] >= 0.9
                and report["num_classes_present"] == 10
                and (limit is None or report["fid_ratio"] <= limit)
            )
            ok &= passed
            results[name] = {**report, "generate_seconds": round(seconds, 2), "max_fid_ratio": limit, "passed": passed}
            images.save_grid(samples[:100], ROOT / "docs" / "samples" / f"{name}.png", nrow=10)
            print(name, json.dumps(results[name]), flush=True)
    finally:
        code = server.stop()
    result = {"seed": args.seed, "n": args.n, "sigterm_exit_code": code, "models": _kept(args) | results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


def _kept(args: argparse.Namespace) -> dict:
    """The rows of models not rerun this time from an earlier report with the same seed and n,
    so that ``--models dcgan-mnist`` refreshes one row and keeps the others."""
    if not args.json.is_file():
        return {}
    earlier = json.loads(args.json.read_text())
    if (earlier.get("seed"), earlier.get("n")) != (args.seed, args.n):
        return {}
    return {name: row for name, row in earlier.get("models", {}).items() if name not in args.models}


if __name__ == "__main__":
    sys.exit(main())
