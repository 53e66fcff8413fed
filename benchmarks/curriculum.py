"""The newer families' figures that no single manifest holds, measured through the serving core.

    python -m benchmarks.curriculum       # results/runs/<date>-curriculum/curriculum.json
    python -m benchmarks.curriculum --parts stylegan flow --grids docs/samples   # and their grids

- latent against pixel-space diffusion: ``ldm-mnist`` and ``ddpm-mnist`` at 50 and 20 DDIM steps
  (η = 0), quality of 100 samples (seed 2026) and the seconds they took in-process;
- the flow: held-out bits per dimension (uniform dequantization, 8 draws; and the bin-centre
  figure the likelihood graph serves) and quality at temperatures 1.0 .. 0.4;
- the StyleGAN at truncation ψ = 1 and 0.7;
- the PixelCNN: held-out bits per dimension and quality at temperatures 1.0 and 0.9 (labels 0..9
  in turn).

Every sample goes through ``genserve.training.evaluate.samples_from_folder`` (the server's code,
ONNX Runtime) and is judged by the evaluation classifier as ``genserve eval`` judges it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import new_output
from genserve.cli.defaults import DEFAULT_MODELS
from genserve.training import EVAL_SEED
from genserve.training.evaluate import Evaluator, class_accuracy, samples_from_folder

SEED = EVAL_SEED
N = 100


def _judge(evaluator: Evaluator, images: np.ndarray, seconds: float, labels: np.ndarray | None = None) -> dict:
    report = evaluator.evaluate(images.reshape(-1, 28, 28)).to_dict()
    row = {k: report[k] for k in ("fid_ratio", "confident_fraction", "num_classes_present", "inception_score")}
    row |= {k: report[k] for k in ("precision", "recall")} | {"seconds": round(seconds, 1)}
    if labels is not None:
        row["asked_class_fraction"] = class_accuracy(evaluator, images.reshape(-1, 28, 28), labels)[0]
    return row


def _timed(folder: Path, **kw) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    images = samples_from_folder(folder, N, SEED, **kw)
    return images, time.perf_counter() - started


def diffusion(models: Path, evaluator: Evaluator) -> list[dict]:
    rows = []
    for steps in (50, 20):
        for name in ("ldm-mnist", "ddpm-mnist"):
            images, seconds = _timed(models / name, steps=steps)
            rows.append({"model": name, "steps": steps, **_judge(evaluator, images, seconds)})
            print(rows[-1], flush=True)
    return rows


FLOW_TEMPERATURES = (1.0, 0.8, 0.7, 0.6, 0.5, 0.4)


def flow(models: Path, evaluator: Evaluator, grids: Path | None = None) -> dict:
    from genserve.nets import load_checkpoint
    from genserve.training.flow import centre_bits_per_dim, held_out_bits_per_dim, save_temperature_grid

    folder = models / "realnvp-mnist"
    net, _ = load_checkpoint(folder / "weights")
    held_out = evaluator.held_out.images
    result = {
        "held_out_bits_per_dim": round(held_out_bits_per_dim(net, held_out, draws=8), 4),
        "held_out_bits_per_dim_centre": round(centre_bits_per_dim(net, held_out), 4),
        "temperatures": [],
    }
    if grids:
        print(save_temperature_grid(net, FLOW_TEMPERATURES, grids / "realnvp-mnist-temperature.png"), flush=True)
    for temperature in FLOW_TEMPERATURES:
        images, seconds = _timed(folder, temperature=temperature)
        result["temperatures"].append({"temperature": temperature, **_judge(evaluator, images, seconds)})
        print(result["temperatures"][-1], flush=True)
    return result


def stylegan(models: Path, evaluator: Evaluator, grids: Path | None = None) -> list[dict]:
    if grids:
        from genserve.nets import load_checkpoint
        from genserve.training.stylegan import save_grids

        net, _ = load_checkpoint(models / "stylegan-mnist" / "weights")
        print(save_grids(net, grids), flush=True)
    rows = []
    for psi in (1.0, 0.7):
        images, seconds = _timed(models / "stylegan-mnist", truncation=psi)
        rows.append({"truncation": psi, **_judge(evaluator, images, seconds)})
        print(rows[-1], flush=True)
    return rows


def pixelcnn(models: Path, evaluator: Evaluator, temperatures: tuple[float, ...]) -> dict:
    from genserve.nets import load_checkpoint
    from genserve.training.pixelcnn import bits_per_dim

    folder = models / "pixelcnn-mnist"
    net, _ = load_checkpoint(folder / "weights")
    held = evaluator.held_out
    result = {"held_out_bits_per_dim": round(bits_per_dim(net, held.images, held.labels), 4), "temperatures": []}
    labels = np.arange(N) % 10
    for temperature in temperatures:
        images, seconds = _timed(folder, labels=labels, temperature=temperature)
        result["temperatures"].append({"temperature": temperature, **_judge(evaluator, images, seconds, labels)})
        print(result["temperatures"][-1], flush=True)
    return result


# Each part from the command line's options and the shared evaluator.
PARTS = {
    "diffusion": lambda args, evaluator: diffusion(args.models, evaluator),
    "flow": lambda args, evaluator: flow(args.models, evaluator, args.grids),
    "stylegan": lambda args, evaluator: stylegan(args.models, evaluator, args.grids),
    "pixelcnn": lambda args, evaluator: pixelcnn(args.models, evaluator, tuple(args.pixelcnn_temperatures)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--pixelcnn-temperatures", type=float, nargs="*", default=[1.0, 0.9])
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS), help="what to measure (default all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--grids", type=Path, help="also draw the StyleGAN's and the flow's documentation grids here (docs/samples)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    evaluator = Evaluator()
    result = {"benchmark": "curriculum", "samples": N, "seed": SEED}
    for part in args.parts:
        result[part] = PARTS[part](args, evaluator)
    path = args.json or new_output("curriculum")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
