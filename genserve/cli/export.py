"""``genserve export``: checkpoints to model folders (ONNX, parity check, optionally a TensorRT engine)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from genserve.cli.defaults import DEFAULT_CHECKPOINTS, DEFAULT_MODELS

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads

# Served names of each exportable family. The checkpoint folder is the served name, except for
# the models described in export.onnx_export.SERVED, which name their own.
EXPORTS = {
    "ddpm": ("ddpm-mnist",),
    "ddpm-cond": ("ddpm-cond-mnist",),
    "dcgan": ("dcgan-mnist",),
    "gaussian": ("gaussian-mnist",),
    "vae": ("vae-mnist", "vae-mnist-reconstruct"),
    "cgan": ("cgan-mnist",),
    "acgan": ("acgan-mnist",),
    "pix2pix": ("pix2pix-edges2mnist",),
    "srresnet": ("srresnet-mnist-x4",),
    "srgan": ("srgan-mnist-x4",),
    "cyclegan": ("cyclegan-mnist2digits", "cyclegan-digits2mnist"),
    "pixelcnn": ("pixelcnn-mnist",),
    "latent-diffusion": ("ldm-mnist",),
    "stylegan": ("stylegan-mnist",),
    "flow": ("realnvp-mnist",),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export checkpoints to model folders (ONNX + parity check [+ TensorRT])")
    p.add_argument("families", nargs="+", choices=sorted(EXPORTS))
    p.add_argument("--checkpoints", type=Path, help=f"checkpoint root (default {DEFAULT_CHECKPOINTS})")
    p.add_argument(
        "--checkpoint", type=Path, help="export this checkpoint folder instead (one family; e.g. a training variant)"
    )
    p.add_argument("--models", type=Path, help=f"model repository to write (default {DEFAULT_MODELS})")
    p.add_argument("--max-batch-size", type=int, default=64, help="engine batch limit recorded in the manifest")
    p.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (needs tensorrt + a GPU)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"], help="TensorRT precision")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from genserve.export.onnx_export import SERVED, export_model_folder

    if args.checkpoint and len(args.families) > 1:
        raise SystemExit("--checkpoint takes one family")
    for name in (name for family in args.families for name in EXPORTS[family]):
        servable = SERVED.get(name)
        checkpoint = args.checkpoint or (args.checkpoints or DEFAULT_CHECKPOINTS) / (
            servable.checkpoint if servable else name
        )
        out = (args.models or DEFAULT_MODELS) / name
        manifest = export_model_folder(checkpoint, out, name, max_batch_size=args.max_batch_size, servable=servable)
        log.info("exported %s to %s (parity max abs error %s)", name, out, manifest.source["parity_max_abs_error"])
        if args.tensorrt:
            from genserve.export.tensorrt import EngineSpec, Precision, build_engine

            spec = EngineSpec.from_manifest(manifest, precision=Precision(args.precision))
            log.info("TensorRT engine %s", build_engine(out, spec))
    return 0
