"""Classifier-free guidance sweep of a guided class-conditional model (``ddpm-cond-mnist``, a
guided ``pixelcnn-mnist``): for each guidance scale w, the same images (same seed, same noise,
image i asked for class i mod 10) through the serving core in-process
(``training.evaluate.evaluate_task``, ONNX Runtime), judged by the evaluation classifier: the
fraction of samples of the asked class, the confident fraction, and FID in its feature space
against the real-vs-real floor at the same sample count. The trade-off it shows is Ho &
Salimans' (2022): guidance buys class fidelity with diversity. Writes a new run folder's
guidance.json and a PNG next to it, and prints a markdown table.

    python -m benchmarks.guidance [--model M] [--guidance 0 1 2 3 5] [-n 500] [--steps 50] [--seed 2026]

``--steps`` applies to a diffusion model (DDIM, eta 0); an autoregressive model runs its 784.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.report import new_output
from genserve import images
from genserve.training import EVAL_SEED

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| guidance w | asked class | worst class | confident | FID | FID / floor | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        worst = min(r["asked_class_fraction_per_class"])
        lines.append(
            f"| {r['guidance']:g} | {100 * r['asked_class_fraction']:.1f}% | {100 * worst:.0f}% "
            f"| {r['confident_fraction']:.3f} | {r['fid']:.1f} | {r['fid_ratio']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], title: str, out: Path) -> Path:
    """Asked-class and confident fractions, and FID/floor, against w."""
    w = [r["guidance"] for r in rows]
    with images.saved_figure(out, 1, 2, figsize=(10, 4)) as (fig, axes):
        axes[0].plot(w, [r["asked_class_fraction"] for r in rows], "o-", label="asked class")
        axes[0].plot(w, [r["confident_fraction"] for r in rows], "s--", label="confident (p ≥ 0.9)")
        axes[0].axhline(0.95, color="gray", linestyle=":", linewidth=1, label="target 0.95 (asked class)")
        axes[0].set_ylabel("fraction of samples (higher is better)")
        axes[1].plot(w, [r["fid_ratio"] for r in rows], "o-")
        axes[1].axhline(1.0, color="gray", linestyle="--", linewidth=1)
        axes[1].set_ylabel("FID / real-vs-real floor (lower is better)")
        for ax in axes:
            ax.set_xlabel("guidance scale w (1 = conditional model, 0 = unconditional)")
            ax.grid(True, alpha=0.3)
        axes[0].legend()
        fig.suptitle(title, fontsize=10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ddpm-cond-mnist", help="guided class-conditional model folder")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="model repository (default models/)")
    parser.add_argument("--guidance", nargs="+", type=float, default=[0.0, 1.0, 2.0, 3.0, 5.0], metavar="W")
    parser.add_argument("-n", "--num-samples", type=int, default=500, help="images per scale (default 500)")
    parser.add_argument("--steps", type=int, default=50, help="diffusion models: DDIM (eta 0) steps (default 50)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--json", type=Path, default=None, help="report (PNG next to it)")
    args = parser.parse_args(argv)
    args.json = args.json or new_output("guidance")  # a new run folder each run
    if not 10 <= args.num_samples <= 1000:  # the evaluator's held-out reference set has 1,000 digits
        parser.error(f"-n must be in [10, 1000], got {args.num_samples}")

    from genserve.manifest import Manifest
    from genserve.signature import ModelKind
    from genserve.training.evaluate import Evaluator, evaluate_task

    folder = args.models / args.model
    diffusion = Manifest.load(folder, verify_hashes=False).kind is ModelKind.DIFFUSION
    steps = args.steps if diffusion else None
    evaluator = Evaluator()
    machine = report.machine()
    rows = []
    for i, w in enumerate(args.guidance, 1):
        report.progress(i, len(args.guidance), f"w = {w:g}: {args.num_samples} images")
        start = time.perf_counter()
        metrics, _ = evaluate_task(folder, args.num_samples, args.seed, evaluator, steps, w)
        row = {"guidance": w, **metrics, "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        report.progress(
            i,
            len(args.guidance),
            f"w = {w:g}: asked class {row['asked_class_fraction']:.3f}, confident {row['confident_fraction']:.3f}, "
            f"FID/floor {row['fid_ratio']:.2f} ({row['seconds']:.0f} s)",
        )
    result = {
        "what": "classifier-free guidance sweep: asked-class fraction, confidence and classifier-feature FID vs w",
        "created": report.created(),
        "settings": {
            "model": args.model,
            "num_samples": args.num_samples,
            **(
                {"sampler": "ddim", "eta": 0.0, "steps": steps} if diffusion else {"temperature": "the model's default"}
            ),
            "seed": args.seed,
            "labels": "image i asks for class i mod 10",
            "source": "in-process ModelRunner (onnxruntime)",
        },
        "machine": machine,
        "rows": rows,
    }
    sampling = f"DDIM {steps} steps" if diffusion else "the model's own steps"
    title = f"{args.model}: {args.num_samples} samples, {sampling}, seed {args.seed}"
    report.write(result, args.json, lambda png: plot(rows, title, png), markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
