"""``genserve train``: train a model family on MNIST."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from genserve.cli.defaults import DEFAULT_CHECKPOINTS, DEFAULT_CLASSIFIER

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads

# Families trained through ``--set``: module under genserve.training, its config class and train function.
FAMILY_TRAINERS = {
    "ddpm": ("ddpm", "DDPMTrainConfig", "train_ddpm"),
    "dcgan": ("dcgan", "DCGANTrainConfig", "train_dcgan"),
    "gaussian": ("gaussian", "GaussianTrainConfig", "train_gaussian"),
    "vae": ("vae", "VAETrainConfig", "train_vae"),
    "cgan": ("cgan", "CGANTrainConfig", "train_cgan"),
    "acgan": ("acgan", "ACGANTrainConfig", "train_acgan"),
    "pix2pix": ("pix2pix", "Pix2PixTrainConfig", "train_pix2pix"),
    "srresnet": ("superres", "SRResNetTrainConfig", "train_srresnet"),
    "srgan": ("superres", "SRGANTrainConfig", "train_srgan"),
    "cyclegan": ("cyclegan", "CycleGANTrainConfig", "train_cyclegan"),
    "pixelcnn": ("pixelcnn", "PixelCNNTrainConfig", "train_pixelcnn"),
    "latent-diffusion": ("latent_diffusion", "LatentDiffusionTrainConfig", "train_latent_diffusion"),
    "stylegan": ("stylegan", "StyleGANTrainConfig", "train_stylegan"),
    "flow": ("flow", "FlowTrainConfig", "train_flow"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model family on MNIST (resumes from --out if a state is there)")
    p.add_argument("family", choices=["classifier", *FAMILY_TRAINERS])
    p.add_argument("--out", type=Path, help="checkpoint folder (default checkpoints/<family>-mnist)")
    p.add_argument("--steps", type=int, help="optimizer steps (epochs for the classifier)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a training config field, e.g. loss=lsgan or net.features=16 (repeatable)",
    )
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or (
        DEFAULT_CLASSIFIER if args.family == "classifier" else DEFAULT_CHECKPOINTS / f"{args.family}-mnist"
    )
    if args.family == "classifier":
        from genserve.training.classifier import ClassifierTrainConfig, train_classifier

        cfg = ClassifierTrainConfig(seed=args.seed)
        if args.steps:
            cfg.epochs = args.steps
        train_classifier(out, cfg)
    else:
        from genserve.training.loop import ConfigMismatch

        try:
            _train_family(args, out)
        except ConfigMismatch as exc:
            log.error("%s", exc)
            return 2
    return 0


def _train_family(args: argparse.Namespace, out: Path) -> None:
    import importlib

    module_name, config_name, train_name = FAMILY_TRAINERS[args.family]
    module = importlib.import_module(f"genserve.training.{module_name}")
    cfg = getattr(module, config_name)(seed=args.seed)
    if args.steps:
        cfg.steps = args.steps
    for assignment in args.set or []:
        apply_override(cfg, assignment)
    getattr(module, train_name)(out, cfg)


def apply_override(config, assignment: str) -> None:
    """``key=value`` or ``net.key=value`` on a (nested) config dataclass; the value is parsed as
    JSON where it can be (numbers, booleans) and kept as a string otherwise."""
    import dataclasses
    import json

    key, sep, raw = assignment.partition("=")
    if not sep:
        raise SystemExit(f"--set expects KEY=VALUE, got {assignment!r}")
    *parents, leaf = key.split(".")
    target = functools.reduce(getattr, parents, config)
    if leaf not in {f.name for f in dataclasses.fields(target)}:
        raise SystemExit(f"--set: {type(target).__name__} has no field {leaf!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    setattr(target, leaf, value)
