"""Sample quality against sampling steps, in the manner of the DDIM paper's Table 1 (Song et al. 2021):
ddpm-mnist with DDPM on the full 1000-step schedule and DDIM (eta = 0) on 100, 50, 20 and 10 steps.

Each setting generates the same images (same seed, same x_T) in-process through the serving core
(``ModelRunner``, ONNX Runtime) and judges them with the evaluation classifier: FID in its feature
space, the real-vs-real floor at the same sample count (only FID/floor is comparable across sample
counts), the fraction of confidently classified digits and the classes present. Writes a new
run folder's quality_steps.json (or --json) and a PNG next to it, and prints a markdown table.

    python -m benchmarks.quality_steps [-n 200] [--seed 2026] [--steps 10 20 | --settings ddpm-1000 ddim-50]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.report import new_output
from genserve import images
from genserve.schedule import Sampler
from genserve.training import EVAL_SEED

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SETTINGS = ("ddpm-1000", "ddim-100", "ddim-50", "ddim-20", "ddim-10")
DRAWS = 5  # reference subsets FID and floor are averaged over (Evaluator)


@dataclass(frozen=True)
class Setting:
    sampler: Sampler
    steps: int

    @property
    def name(self) -> str:
        return f"{self.sampler.value}-{self.steps}"

    @property
    def eta(self) -> float | None:
        return 0.0 if self.sampler is Sampler.DDIM else None  # deterministic DDIM, as in the paper's table

    @classmethod
    def parse(cls, text: str) -> Setting:
        """``ddpm-1000``, ``ddim-50``: SAMPLER-STEPS."""
        sampler, _, steps = text.partition("-")
        try:
            return cls(Sampler(sampler), int(steps))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected SAMPLER-STEPS like ddim-50 or ddpm-1000, got {text!r}") from exc

    @classmethod
    def for_steps(cls, steps: int, num_timesteps: int) -> Setting:
        """The server's default sampler for a step count: DDPM on the full schedule, DDIM below it."""
        return cls(Sampler.DDPM if steps == num_timesteps else Sampler.DDIM, steps)


def generate(runner: Any, n: int, seed: int, setting: Setting) -> np.ndarray:
    """uint8 (N, H, W, C). Requests hold at most ``runner.max_images`` images, so larger N is split
    into requests with seeds seed, seed + 1, ...: every image is still distinct."""
    from genserve.serving.domain import GenerateRequest

    chunks = []
    for j, start in enumerate(range(0, n, runner.max_images)):
        count = min(runner.max_images, n - start)
        request = GenerateRequest(
            runner.name, count, seed=seed + j, steps=setting.steps, sampler=setting.sampler, eta=setting.eta
        )
        chunks.append(runner.generate(request))
    return np.concatenate(chunks)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| sampler | steps | FID | floor | FID/floor | confident | classes | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sampler = "DDPM" if r["sampler"] == Sampler.DDPM.value else f"DDIM (η = {r['eta']:g})"
        lines.append(
            f"| {sampler} | {r['steps']} | {r['fid']:.2f} | {r['fid_floor']:.2f} | {r['fid_ratio']:.3f} "
            f"| {r['confident_fraction']:.3f} | {r['num_classes_present']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], title: str, out: Path) -> Path:
    """FID/floor and confident fraction against steps (log x); DDIM as a line, DDPM as a star."""
    with images.saved_figure(out, 1, 2, figsize=(10, 4)) as (fig, axes):
        for ax, key, label in (
            (axes[0], "fid_ratio", "FID / real-vs-real floor (lower is better)"),
            (axes[1], "confident_fraction", "confident fraction (higher is better)"),
        ):
            for sampler, style in ((Sampler.DDIM, "o-"), (Sampler.DDPM, "*")):
                chosen = sorted((r for r in rows if r["sampler"] == sampler.value), key=lambda r: r["steps"])
                if chosen:
                    name = "DDIM, η = 0" if sampler is Sampler.DDIM else "DDPM"
                    ax.plot([r["steps"] for r in chosen], [r[key] for r in chosen], style, markersize=10, label=name)
            ax.set_xscale("log")
            steps = sorted({r["steps"] for r in rows})
            ax.set_xticks(steps, [str(k) for k in steps])  # the step counts run, not 2×10¹
            ax.minorticks_off()
            ax.set_xlabel("sampling steps (UNet evaluations)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        axes[0].axhline(1.0, color="gray", linestyle="--", linewidth=1)
        fig.suptitle(title, fontsize=10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ddpm-mnist", help="diffusion model folder (default ddpm-mnist)")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="model repository (default models/)")
    parser.add_argument("-n", "--num-samples", type=int, default=200, help="images per setting (default 200)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--settings",
        nargs="+",
        type=Setting.parse,
        metavar="SAMPLER-STEPS",
        help=f"settings to run (default {' '.join(DEFAULT_SETTINGS)})",
    )
    which.add_argument(
        "--steps",
        nargs="+",
        type=int,
        metavar="K",
        help="shorthand: these step counts, DDPM on the full schedule and DDIM (eta 0) below it",
    )
    parser.add_argument("--json", type=Path, default=None, help="report (PNG next to it)")
    args = parser.parse_args(argv)
    args.json = args.json or new_output("quality_steps")  # a new run folder each run

    from genserve.serving.runner import ModelRunner
    from genserve.training.evaluate import Evaluator

    runner = ModelRunner(args.models / args.model)
    num_timesteps = runner.manifest.diffusion.num_timesteps
    if args.steps:
        settings = [Setting.for_steps(k, num_timesteps) for k in args.steps]
    else:
        settings = args.settings or [Setting.parse(s) for s in DEFAULT_SETTINGS]
    bad = [s.name for s in settings if not 1 <= s.steps <= num_timesteps]
    if bad:
        parser.error(f"steps must be in [1, {num_timesteps}] for {runner.name}: {' '.join(bad)}")
    if not 2 <= args.num_samples <= 1000:  # the evaluator's held-out reference set has 1,000 digits
        parser.error(f"-n must be in [2, 1000], got {args.num_samples}")
    evaluator = Evaluator()
    n = args.num_samples
    machine = report.machine()

    rows = []
    for i, setting in enumerate(settings, 1):
        report.progress(i, len(settings), f"{setting.name}: generating {n} images")
        start = time.perf_counter()
        samples = generate(runner, n, args.seed, setting)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        quality = evaluator.evaluate(samples.reshape(n, 28, 28), draws=DRAWS)
        row = {
            "sampler": setting.sampler.value,
            "eta": setting.eta,
            "steps": setting.steps,
            "fid": quality.fid,
            "fid_floor": quality.fid_floor,
            "fid_ratio": quality.fid_ratio,
            "confident_fraction": quality.confident_fraction,
            "num_classes_present": quality.num_classes_present,
            "class_histogram": quality.class_histogram,
            "seconds": round(seconds, 2),
            "images_per_second": round(n / seconds, 3),
            "eval_seconds": round(time.perf_counter() - start, 2),
        }
        rows.append(row)
        report.progress(
            i,
            len(settings),
            f"{setting.name}: {seconds:.1f} s, FID/floor {row['fid_ratio']:.3f}, "
            f"confident {row['confident_fraction']:.3f}, {row['num_classes_present']} classes",
        )

    result = {
        "what": "sample quality vs sampling steps (DDPM full schedule, DDIM eta 0), classifier-feature FID",
        "created": report.created(),
        "settings": {
            "model": runner.name,
            "num_samples": n,
            "seed": args.seed,
            "draws": DRAWS,
            "classifier_accuracy": evaluator.classifier_accuracy,
            "source": "in-process ModelRunner (onnxruntime), x0 clipped, fixed_small variance for DDPM",
            "runs": [s.name for s in settings],
        },
        "machine": machine,
        "rows": rows,
    }
    title = f"{runner.name}: quality vs steps, {n} samples, seed {args.seed} (FID in classifier features)"
    report.write(result, args.json, lambda png: plot(rows, title, png), markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
