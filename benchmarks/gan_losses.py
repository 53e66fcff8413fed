"""GAN objectives compared on the class-conditional GAN (``cgan-mnist``'s networks): the
non-saturating loss (Goodfellow et al. 2014), least squares (Mao et al. 2017), WGAN-GP
(Gulrajani et al. 2017) and the original weight-clipped WGAN (Arjovsky et al. 2017), each with
its paper's optimiser recipe (``training.cgan.RECIPES``), on the same data, seed and number of
generator steps. The WGANs take 5 critic steps per generator step, so they cost more wall time
per step: the budget is generator steps, and the training CPU and wall seconds are reported
next to it.

Each run trains into ``checkpoints/cgan-loss-<loss>/`` (rerunning reuses a finished run and
resumes an unfinished one), is exported to a temporary model folder as ``cgan-mnist`` is, and
judged by ``genserve eval``'s evaluation (``training.evaluate.evaluate_task``: image i asks for
class i mod 10; FID against the real-vs-real floor, confident and asked-class fractions).
Writes the JSON, a bar chart next to it and each loss's sample grid (``<stem>-<loss>.png``),
and prints a markdown table.

    python -m benchmarks.gan_losses [--losses ns lsgan wgan-gp wgan] [--steps 1500] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.report import new_output
from genserve import images
from genserve.training import EVAL_SEED

ROOT = Path(__file__).resolve().parent.parent
LOSSES = ("ns", "lsgan", "wgan-gp", "wgan")
STEPS = 1500  # generator steps: the four runs fit ~50 minutes of one core together
TIMES_FILE = "benchmark_seconds.json"  # training wall and CPU seconds, summed over resumed runs


def train_config(loss: str, steps: int, seed: int):
    from genserve.nets.cgan import CGANConfig
    from genserve.training.cgan import CGANTrainConfig, resolved
    from genserve.training.gan_losses import GANLoss

    # The gradient penalty is per sample, which batch norm in the critic breaks (Gulrajani et al.
    # 2017, section 4); the other three keep cgan-mnist's batch-norm discriminator.
    net = CGANConfig(disc_batchnorm=GANLoss(loss) is not GANLoss.WGAN_GP)
    return resolved(CGANTrainConfig(net=net, loss=loss, steps=steps, seed=seed))


def train(loss: str, steps: int, seed: int, checkpoints: Path) -> tuple[Path, dict[str, float]]:
    """Train (or resume, or reuse) one loss's run; its folder and its training seconds in all:
    wall, and CPU (this process's; at one thread about the wall time on an idle core, so it
    compares the losses' cost on a machine other jobs share)."""
    from genserve.training.cgan import train_cgan

    out = checkpoints / f"cgan-loss-{loss}"
    times_path = out / TIMES_FILE
    times = json.loads(times_path.read_text()) if times_path.exists() else {"wall": 0.0, "cpu": 0.0}
    meta_path = out / "config.json"
    done = json.loads(meta_path.read_text())["step"] if meta_path.exists() else 0
    if done < steps:
        wall, cpu = time.perf_counter(), time.process_time()
        train_cgan(out, train_config(loss, steps, seed))
        times["wall"] = round(times["wall"] + time.perf_counter() - wall, 1)
        times["cpu"] = round(times["cpu"] + time.process_time() - cpu, 1)
        times_path.write_text(json.dumps(times) + "\n")
    return out, times


def evaluate(checkpoint: Path, loss: str, num_samples: int, seed: int, evaluator) -> tuple[dict, Any, dict]:
    """Export ``checkpoint`` as cgan-mnist is, into a temporary folder; its metrics, sample
    tiles and the export's parity errors."""
    from genserve.export.onnx_export import SERVED, export_model_folder
    from genserve.training.evaluate import evaluate_task

    with tempfile.TemporaryDirectory(prefix="gan-losses-") as tmp:
        folder = Path(tmp) / f"cgan-loss-{loss}"
        manifest = export_model_folder(checkpoint, folder, folder.name, servable=SERVED["cgan-mnist"])
        metrics, tiles = evaluate_task(folder, num_samples, seed, evaluator)
    return metrics, tiles, manifest.source["parity_max_abs_error"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| loss | generator steps | critic steps | optimizer | train CPU s | train wall s | FID | floor | FID / floor "
        "| confident | asked class | classes |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['loss']} | {r['steps']} | {r['critic_steps']} | {r['optimizer']} {r['lr']:g} "
            f"| {r['train_cpu_seconds']:.0f} | {r['train_wall_seconds']:.0f} "
            f"| {r['fid']:.1f} | {r['fid_floor']:.1f} | {r['fid_ratio']:.2f} "
            f"| {r['confident_fraction']:.2f} | {r['asked_class_fraction']:.2f} | {r['num_classes_present']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], title: str, out: Path) -> Path:
    """FID/floor, and the confident and asked-class fractions, per loss."""
    names = [r["loss"] for r in rows]
    x = range(len(rows))
    with images.saved_figure(out, 1, 2, figsize=(10, 4)) as (fig, axes):
        axes[0].bar(x, [r["fid_ratio"] for r in rows], color="tab:blue")
        axes[0].axhline(1.0, color="gray", linestyle="--", linewidth=1, label="real data (1.0)")
        axes[0].axhline(3.0, color="tab:red", linestyle=":", linewidth=1, label="target (3.0)")
        axes[0].set_ylabel("FID / real-vs-real floor (lower is better)")
        axes[0].legend()
        width = 0.4
        axes[1].bar([i - width / 2 for i in x], [r["confident_fraction"] for r in rows], width, label="confident")
        axes[1].bar([i + width / 2 for i in x], [r["asked_class_fraction"] for r in rows], width, label="asked class")
        axes[1].axhline(0.95, color="gray", linestyle=":", linewidth=1, label="target 0.95 (asked class)")
        axes[1].set_ylim(0, 1.3)  # room for the legend above the bars
        axes[1].set_ylabel("fraction of samples (higher is better)")
        axes[1].legend(loc="upper right")
        for ax in axes:
            ax.set_xticks(list(x), names)
            ax.set_xlabel("GAN objective")
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(title, fontsize=10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--steps", type=int, default=STEPS, help=f"generator steps per run (default {STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED, help=f"evaluation seed (default {EVAL_SEED})")
    parser.add_argument("-n", "--num-samples", type=int, default=100, help="samples judged per loss (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="run folders' root")
    parser.add_argument("--json", type=Path, default=None, help="report (PNG next to it)")
    args = parser.parse_args(argv)
    args.json = args.json or new_output("gan_losses")  # a new run folder each run

    import torch

    from genserve.training.evaluate import Evaluator

    torch.set_num_threads(args.threads)
    machine = report.machine()
    rows, total = [], len(args.losses)
    for i, loss in enumerate(args.losses, 1):
        report.progress(i, total, f"{loss}: training {args.steps} generator steps (or reusing the run)")
        checkpoint, seconds = train(loss, args.steps, args.seed, args.checkpoints)
        meta = json.loads((checkpoint / "config.json").read_text())
        report.progress(i, total, f"{loss}: exporting and judging {args.num_samples} samples")
        metrics, tiles, parity = evaluate(checkpoint, loss, args.num_samples, args.eval_seed, Evaluator())
        trained = meta["train"]
        rows.append(
            {
                "loss": loss,
                "steps": meta["step"],
                "critic_steps": trained["critic_steps"],
                "optimizer": trained["optimizer"],
                "lr": trained["lr"],
                "betas": trained["betas"],
                "clip": trained["clip"],
                "disc_batchnorm": trained["net"]["disc_batchnorm"],
                "train_wall_seconds": seconds["wall"],
                "train_cpu_seconds": seconds["cpu"],
                "parity_max_abs_error": parity,
                **metrics,
            }
        )
        images.save_grid(tiles, args.json.with_name(f"{args.json.stem}-{loss}.png"), nrow=10)
        report.progress(
            i,
            total,
            f"{loss}: FID/floor {metrics['fid_ratio']:.2f}, confident {metrics['confident_fraction']:.2f}, "
            f"asked class {metrics['asked_class_fraction']:.2f} ({seconds['wall']:.0f} s training)",
        )
    result = {
        "what": "GAN objectives on the class-conditional GAN: same networks, data, seed and generator steps",
        "created": report.created(),
        "settings": {
            "generator_steps": args.steps,
            "batch_size": 64,
            "seed": args.seed,
            "threads": args.threads,
            "networks": "cgan-mnist's: CGANGenerator, projection discriminator (no batch norm for WGAN-GP)",
            "served_generator": "EMA 0.999 of the trained one",
            "eval": {
                "num_samples": args.num_samples,
                "seed": args.eval_seed,
                "labels": "image i asks for class i mod 10",
                "source": "in-process onnxruntime, exported as cgan-mnist (training.evaluate.evaluate_task)",
            },
            "train_wall_seconds": "training wall seconds, summed over resumed runs, on a CPU other jobs share",
            "train_cpu_seconds": "training CPU seconds of the benchmark process (one thread), summed likewise",
        },
        "machine": machine,
        "rows": rows,
    }
    title = f"cgan-mnist networks, {args.steps} generator steps each; {args.num_samples} samples, seed {args.eval_seed}"
    report.write(result, args.json, lambda png: plot(rows, title, png), markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
