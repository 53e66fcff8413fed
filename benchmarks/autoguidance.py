"""Autoguidance and its distillation into ``ddpm-mnist``, at few DDIM steps.

Three ways to sample the same images (same seeds, same x_T, the server's noise keys), judged by
the evaluation classifier over several seeds:

- **teacher**: the UNet ``ddpm-mnist`` was distilled from, alone (w = 1);
- **autoguided**: that UNet guided by a smaller, shorter-trained one (Karras et al. 2024),
  ε = ε_guide + w (ε_teacher − ε_guide), for each w asked: two networks per step
  (``AutoGuidedDiffusionStep``, PyTorch);
- **distilled**: the served model folder (``models/ddpm-mnist``, ONNX Runtime through the serving
  core), one network per step, trained to predict the guided ε at one w.

Writes a new run folder's autoguidance.json and a PNG next to it, and prints a markdown table.
The checkpoints are the ones the recipe in docs/development.md trains.

    python -m benchmarks.autoguidance [--teacher DIR] [--guide DIR] [--guidance 1.5 2 2.5]
        [--seeds 2026 1 2] [--steps 50] [-n 100]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.report import new_output
from genserve import images
from genserve.training import EVAL_SEED

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ("confident_fraction", "fid_ratio", "precision", "recall", "inception_score")


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of each summary metric, the fewest classes any seed had, and the seeds' own figures."""
    return {
        **{f"mean_{k}": round(float(np.mean([m[k] for m in metrics])), 4) for k in SUMMARY},
        "min_classes_present": min(m["num_classes_present"] for m in metrics),
        "per_seed": [{k: m[k] for k in (*SUMMARY, "num_classes_present")} for m in metrics],
    }


def markdown_table(rows: list[dict[str, Any]], seeds: list[int]) -> str:
    lines = [
        f"| sampler | nets per step | confident ({' / '.join(map(str, seeds))}) | mean | FID / floor (mean) "
        "| precision | recall | classes (fewest) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        per_seed = " / ".join(f"{m['confident_fraction']:.2f}" for m in r["per_seed"])
        lines.append(
            f"| {r['name']} | {r['nets_per_step']} | {per_seed} | {r['mean_confident_fraction']:.3f} "
            f"| {r['mean_fid_ratio']:.2f} | {r['mean_precision']:.2f} | {r['mean_recall']:.2f} "
            f"| {r['min_classes_present']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], title: str, out: Path) -> Path:
    """Confident fraction and FID/floor (means over seeds) for each sampler."""
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    with images.saved_figure(out, 1, 2, figsize=(11, 4)) as (fig, axes):
        axes[0].bar(x, [r["mean_confident_fraction"] for r in rows], color="tab:blue")
        axes[0].axhline(0.90, color="gray", linestyle=":", linewidth=1, label="target 0.90")
        axes[0].set_ylim(0.7, 1.0)
        axes[0].set_ylabel("confident fraction, mean (higher is better)")
        axes[0].legend()
        axes[1].bar(x, [r["mean_fid_ratio"] for r in rows], color="tab:orange")
        axes[1].axhline(1.0, color="gray", linestyle="--", linewidth=1)
        axes[1].set_ylabel("FID / floor, mean (lower is better)")
        for ax in axes:
            ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(title, fontsize=10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=ROOT / "checkpoints" / "ddpm-mnist-ft")
    parser.add_argument("--guide", type=Path, default=ROOT / "checkpoints" / "ddpm-guide")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "ddpm-mnist", help="the distilled model folder")
    parser.add_argument("--guidance", nargs="+", type=float, default=[1.5, 2.0, 2.5], metavar="W")
    parser.add_argument("--seeds", nargs="+", type=int, default=[EVAL_SEED, 1, 2])
    parser.add_argument("--steps", type=int, default=50, help="DDIM (eta 0) steps (default 50)")
    parser.add_argument("-n", "--num-samples", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="report (PNG next to it)")
    args = parser.parse_args(argv)
    args.json = args.json or new_output("autoguidance")  # a new run folder each run

    import json

    import torch

    from genserve import schedule
    from genserve.nets import load_checkpoint
    from genserve.nets.step import AutoGuidedDiffusionStep, DiffusionStep, sample
    from genserve.training.data import to_uint8
    from genserve.training.evaluate import Evaluator, samples_from_folder

    teacher, _ = load_checkpoint(args.teacher)
    guide, _ = load_checkpoint(args.guide)
    teacher, guide = teacher.eval(), guide.eval()
    evaluator = Evaluator()
    distilled_from = json.loads((args.model / "weights" / "config.json").read_text()).get("train", {})  # its recipe

    def reference(step: torch.nn.Module):
        def draw(seed: int) -> np.ndarray:
            x = sample(step, args.num_samples, seed, (1, 28, 28), args.steps, schedule.Sampler.DDIM, eta=0.0)
            return to_uint8(x)

        return draw

    samplers = [("teacher alone (w = 1)", 1, reference(DiffusionStep(teacher)))]
    samplers += [
        (f"autoguided, w = {w:g}", 2, reference(AutoGuidedDiffusionStep(teacher, guide, w))) for w in args.guidance
    ]
    distilled_w = distilled_from.get("guide_scale")
    samplers.append(
        (
            f"distilled ({args.model.name}, w = {distilled_w:g})" if distilled_w else f"served ({args.model.name})",
            1,
            lambda seed: samples_from_folder(args.model, args.num_samples, seed, args.steps)[..., 0],
        )
    )
    rows = []
    for i, (name, nets, draw) in enumerate(samplers, 1):
        start = time.perf_counter()
        metrics = [evaluator.evaluate(draw(seed)).to_dict() for seed in args.seeds]
        row = {"name": name, "nets_per_step": nets, **summarize(metrics), "seconds": round(time.perf_counter() - start)}
        rows.append(row)
        report.progress(
            i,
            len(samplers),
            f"{name}: confident {row['mean_confident_fraction']:.3f}, FID/floor {row['mean_fid_ratio']:.2f} "
            f"({row['seconds']} s for {len(args.seeds)} seeds)",
        )
    result = {
        "what": "autoguidance (Karras et al. 2024) and its distillation into one UNet: quality at few DDIM steps",
        "created": report.created(),
        "settings": {
            "teacher": str(args.teacher.relative_to(ROOT) if args.teacher.is_relative_to(ROOT) else args.teacher),
            "guide": str(args.guide.relative_to(ROOT) if args.guide.is_relative_to(ROOT) else args.guide),
            "model": args.model.name,
            "distilled_with": {k: distilled_from.get(k) for k in ("init_from", "guide_from", "guide_scale", "steps")},
            "sampler": "ddim",
            "eta": 0.0,
            "steps": args.steps,
            "num_samples": args.num_samples,
            "seeds": args.seeds,
            "source": "teacher and autoguided: PyTorch reference loop; distilled: in-process ModelRunner (onnxruntime)",
        },
        "machine": report.machine(),
        "rows": rows,
    }
    title = f"{args.steps}-step DDIM, {args.num_samples} samples, seeds {', '.join(map(str, args.seeds))}"
    report.write(result, args.json, lambda png: plot(rows, title, png), markdown_table(rows, args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
