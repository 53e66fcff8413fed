"""``genserve eval``: judge a model's samples (or translations) with the evaluation classifier."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from genserve.cli import connect
from genserve.cli.defaults import DEFAULT_MODELS
from genserve.training import EVAL_SEED

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads

IN_PROCESS = "in-process onnxruntime"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="judge a model's samples with the evaluation classifier (FID, IS, MMD, precision, recall)"
    )
    p.add_argument("model", type=Path, help="model name (folder under --models) or a model folder path")
    p.add_argument("--models", type=Path, help=f"model repository (default {DEFAULT_MODELS})")
    p.add_argument(
        "-n", "--num-images", type=int, help="samples (default 100), or held-out inputs for a translator (default all)"
    )
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"default {EVAL_SEED}, the quality tables' seed")
    p.add_argument("--steps", type=int, help="diffusion steps (default: the model's)")
    p.add_argument(
        "--guidance", type=float, help="guidance scale (guided class-conditional models; default: the model's)"
    )
    p.add_argument("--temperature", type=float, help="sampling temperature (autoregressive models, flows)")
    p.add_argument("--truncation", type=float, help="truncation psi (style-based models; default 1 = none)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--server", help="HOST:PORT: sample through a running server instead of in-process")
    source.add_argument("--images", type=Path, help="judge a uint8 .npy of (N, 28, 28) images instead of sampling")
    p.add_argument("--grid", type=Path, help="also write the first 100 samples as a PNG grid")
    p.add_argument("--update-manifest", action="store_true", help="record the metrics in the model's manifest")
    connect.add_arguments(p)
    p.add_argument(
        "--spread",
        type=int,
        default=0,
        metavar="K",
        help="DDPM/DCGAN in-process: also the confident fraction of -n samples at each of seeds 1..K",
    )
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from genserve.training.evaluate import Evaluator, record_metrics, samples_from_folder

    folder = args.model if args.model.is_dir() else (args.models or DEFAULT_MODELS) / str(args.model)
    name = folder.name
    task = None if (args.images or args.server) else _task_of(folder)  # --images needs no model folder
    if args.spread and (args.images or args.server or task):
        log.error("--spread samples ddpm-mnist or dcgan-mnist in-process; not with --images, --server or %s", name)
        return 2
    if task:
        return _eval_task(args, folder)
    args.num_images = args.num_images or 100
    if args.images:
        samples, source = np.load(args.images), f"file {args.images}"
    elif args.server:
        from genserve.client import GenserveClient

        with GenserveClient(args.server, credentials=connect.credentials(args)) as client:
            samples = client.generate(name, args.num_images, seed=args.seed, steps=args.steps)
        source = f"server {args.server}"
    else:
        samples, source = samples_from_folder(folder, args.num_images, args.seed, args.steps), IN_PROCESS
    samples = samples.reshape(len(samples), 28, 28)
    log.info("evaluating %d samples of %s (%s)", len(samples), name, source)
    evaluator = Evaluator()
    report = evaluator.evaluate(samples)
    extra = {}  # per-code classes of an InfoGAN code, confidence at other seeds
    if source == IN_PROCESS:  # the latents are known: an InfoGAN code's classes can be reported
        from genserve.training.evaluate import code_classes

        codes = code_classes(evaluator, folder, samples, args.seed)
        extra = {"codes": codes} if codes else {}
    if args.spread:
        from genserve.training.evaluate import confidence_spread

        log.info("confident fraction at seeds 1..%d, %d samples each", args.spread, args.num_images)
        seeds = range(1, args.spread + 1)
        extra["spread"] = confidence_spread(evaluator, folder, args.num_images, seeds, args.steps)
    print(json.dumps({"model": name, **report.to_dict(), **extra}, indent=2))
    if args.grid:
        from genserve import images

        images.save_grid(samples[:100], args.grid, nrow=10)
    if args.update_manifest:
        settings = {"num_samples": len(samples), "seed": args.seed, "steps": args.steps, "source": source}
        record_metrics(folder, report, settings)
        log.info("recorded the metrics in %s/manifest.json", folder)
    return 0


def _task_of(folder: Path) -> str | None:
    """The task an issue-5 model folder records for its evaluation (None for the older models)."""
    from genserve import manifest as mf

    return mf.Manifest.load(folder, verify_hashes=False).source.get("task")


def _eval_task(args: argparse.Namespace, folder: Path) -> int:
    """Evaluate a model by its task (samplers, translators) straight on its ONNX graph."""
    import json

    from genserve import images
    from genserve.training.evaluate import Evaluator, evaluate_task, record_metrics

    options = {k: v for k, v in (("temperature", args.temperature), ("truncation", args.truncation)) if v is not None}
    metrics, tiles = evaluate_task(
        folder, args.num_images, args.seed, Evaluator(), args.steps, args.guidance, **options
    )
    print(json.dumps({"model": folder.name, **metrics}, indent=2))
    if args.grid:
        images.save_grid(tiles, args.grid, nrow=10)
    if args.update_manifest:
        settings = {"num_images": args.num_images, "seed": args.seed, "source": IN_PROCESS}
        settings.update({k: v for k, v in (("steps", args.steps), ("guidance", args.guidance)) if v is not None})
        settings.update(options)
        record_metrics(folder, metrics, settings)
        log.info("recorded the metrics in %s/manifest.json", folder)
    return 0
