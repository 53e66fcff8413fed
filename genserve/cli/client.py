"""The client verbs, calls to a running server: ``genserve models``, ``generate``, ``translate`` and
``likelihood``."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from genserve.cli import connect
from genserve.cli.defaults import DEFAULT_SERVER

if TYPE_CHECKING:
    import numpy as np

    from genserve.serving.domain import ModelInfo

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads


def add_parser(sub: argparse._SubParsersAction) -> None:
    from genserve.schedule import Sampler

    def client_parser(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default {DEFAULT_SERVER})")
        p.add_argument("--timeout", type=float, help="deadline of the call in seconds (default none)")
        connect.add_arguments(p)
        return p

    p = client_parser("models", "list the models a server serves: name, kind, shapes, classes, inputs")
    p.set_defaults(func=_models)

    p = client_parser("generate", "generate images with a served model")
    p.add_argument("--model", required=True, help="a name from `genserve models`")
    p.add_argument("-n", "--num-images", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="diffusion steps (default: the model's, the full schedule)")
    p.add_argument(
        "--sampler",
        choices=[s.value for s in Sampler],
        help="diffusion sampler (default: DDPM on the full schedule, DDIM on fewer steps)",
    )
    p.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1] (default 0)")
    p.add_argument("--label", type=int, help="class of every image (class-conditional models; default random)")
    p.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (guided class-conditional models; 1 = no guidance; default: the model's)",
    )
    p.add_argument(
        "--interpolate-to",
        type=int,
        metavar="SEED",
        help="samplers: -n frames along the slerp from image 0 of --seed to image 0 of SEED",
    )
    p.add_argument(
        "--temperature", type=float, help="sampling temperature (autoregressive models and flows; default: the model's)"
    )
    p.add_argument("--truncation", type=float, help="truncation psi in [0, 2] (style-based models; 1 = none)")
    p.add_argument("--mix-seed", type=int, help="style mixing: the later layers take this seed's styles")
    p.add_argument("--mix-layer", type=int, help="style mixing: the first layer with --mix-seed's styles")
    p.add_argument("--stream", action="store_true", help="show a progress bar while the server samples")
    p.add_argument(
        "--out", type=Path, required=True, help="X.png: one grid image; X.npy: uint8 array; else a folder of PNGs"
    )
    p.set_defaults(func=_generate)

    p = client_parser("translate", "translate images with a served translator model (image -> image)")
    p.add_argument("--model", required=True, help="a translator from `genserve models`")
    p.add_argument(
        "--in",
        dest="inputs",
        type=Path,
        required=True,
        metavar="PATH",
        help="uint8 X.npy (N, H, W[, C]), one X.png, or a folder of PNGs",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="X.npy: uint8 array; X.png: the image (a grid for several); else a folder of PNGs",
    )
    p.set_defaults(func=_translate)

    p = client_parser("likelihood", "bits per dimension of images under a model with a likelihood (a flow)")
    p.add_argument("--model", required=True, help="a model whose `genserve models` line says log-likelihood")
    p.add_argument(
        "--in",
        dest="inputs",
        type=Path,
        required=True,
        metavar="PATH",
        help="uint8 X.npy (N, H, W[, C]), one X.png, or a folder of PNGs",
    )
    p.set_defaults(func=_likelihood)


def _rpc_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A failed call prints ``STATUS_NAME: details`` on stderr and exits 1."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        import grpc

        try:
            return handler(args)
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1

    return wrapper


@_rpc_errors
def _models(args: argparse.Namespace) -> int:
    from genserve.client import GenserveClient

    with GenserveClient(args.server, timeout=args.timeout, credentials=connect.credentials(args)) as client:
        for info in client.list_models():
            print(describe_model(info))
    return 0


def describe_model(info: ModelInfo) -> str:
    """``NAME  KIND  SHAPES  DETAILS`` for ``genserve models``, then the input recipe of a translator
    on an indented line."""
    from genserve.signature import ModelKind

    shape = "x".join(map(str, info.image_shape))
    if info.input_shape is not None:
        shape = "x".join(map(str, info.input_shape)) + " -> " + shape
    details = [f"up to {info.max_images} images per request"]
    if info.latent_dim:
        details.append(f"latent {info.latent_dim}")
    if info.num_classes:
        details.append(f"{info.num_classes} classes (--label 0..{info.num_classes - 1})")
    if info.kind is ModelKind.DIFFUSION:
        details.append(f"{info.num_timesteps} timesteps, default {info.default_steps} steps")
    if info.num_steps:
        details.append(f"{info.num_steps} steps (one per pixel)")
    if info.default_guidance is not None:
        details.append(f"--guidance 0..20, default {info.default_guidance:g}")
    if info.default_temperature is not None:
        details.append(f"--temperature, default {info.default_temperature:g}")
    if info.style_layers:
        details.append(
            f"{info.style_layers} style layers (--truncation, --mix-seed, --mix-layer 0..{info.style_layers})"
        )
    if info.likelihood:
        details.append("log-likelihood (genserve likelihood)")
    line = f"{info.name:<24} {info.kind.value:<14} {shape:<20} {', '.join(details)}"
    line += f"\n    inputs: {', '.join(info.request_fields)}"
    return line + (f"\n    input: {info.input_description}" if info.input_description else "")


@_rpc_errors
def _generate(args: argparse.Namespace) -> int:
    from genserve.client import GenserveClient

    with GenserveClient(args.server, timeout=args.timeout, credentials=connect.credentials(args)) as client:
        options = dict(
            seed=args.seed,
            steps=args.steps,
            sampler=args.sampler,
            eta=args.eta,
            label=args.label,
            interpolate_to_seed=args.interpolate_to,
            guidance=args.guidance,
            temperature=args.temperature,
            truncation=args.truncation,
            mix_seed=args.mix_seed,
            mix_layer=args.mix_layer,
        )
        if args.stream:
            batch = _generate_with_progress(client, args.model, args.num_images, options)
        else:
            with _image_bar(args.model, args.num_images) as bar:
                batch = client.generate(args.model, args.num_images, progress=bar.update, **options)
    written = write_images(batch, args.out)
    log.info("wrote %d images from %s to %s", len(batch), args.model, written)
    return 0


def _image_bar(model: str, total: int):
    """One progress bar of images on stderr, shown on a terminal only: a large call is several requests."""
    from tqdm import tqdm

    return tqdm(desc=model, total=total, unit="image", file=sys.stderr, disable=None)


def _generate_with_progress(client, model: str, num_images: int, options: dict) -> np.ndarray:
    """GenerateStream with a progress bar on stderr; returns the images."""
    from tqdm import tqdm

    with tqdm(desc=model, unit="step", file=sys.stderr) as bar:
        for event in client.generate_stream(model, num_images, **options):
            bar.total = event.total
            bar.update(event.step - bar.n)
            if event.images is not None:
                return event.images
    raise RuntimeError("the stream ended without images")


@_rpc_errors
def _translate(args: argparse.Namespace) -> int:
    from genserve.client import GenserveClient

    try:
        sources, names = read_translate_input(args.inputs)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    with (
        GenserveClient(args.server, timeout=args.timeout, credentials=connect.credentials(args)) as client,
        _image_bar(args.model, len(sources)) as bar,
    ):
        batch = client.translate(args.model, sources, progress=bar.update)
    written = write_translations(batch, args.out, names)
    log.info("wrote %d images from %s to %s", len(batch), args.model, written)
    return 0


@_rpc_errors
def _likelihood(args: argparse.Namespace) -> int:
    """Prints one line per image (its name or index, bits per dimension), then the mean."""
    import numpy as np

    from genserve.client import GenserveClient

    try:
        sources, names = read_translate_input(args.inputs)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if not isinstance(sources, np.ndarray):  # PNG files: decoded here, sent as one raw tensor
        from genserve import images

        sources = np.stack([images.decode_png(png) for png in sources])
    with GenserveClient(args.server, timeout=args.timeout, credentials=connect.credentials(args)) as client:
        bits = client.log_likelihood(args.model, sources)
    for i, value in enumerate(bits):
        print(f"{names[i] if names else i}\t{value:.4f}")
    print(f"mean\t{float(bits.mean()):.4f} bits/dim over {len(bits)} images")
    return 0


def read_translate_input(path: Path) -> tuple[np.ndarray | list[bytes], list[str] | None]:
    """``--in`` of ``genserve translate``: a uint8 .npy (N, H, W[, C]) (sent as raw tensors), one
    PNG or a folder of PNGs (sent as the files are, by name order), and the PNGs' names, if any.
    Many images go as several requests (``GenserveClient.translate``)."""
    import numpy as np

    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise ValueError(f"no .png files in {path}")
        return [f.read_bytes() for f in files], [f.name for f in files]
    if path.suffix == ".npy":
        array = np.load(path)
        if array.dtype != np.uint8:
            raise ValueError(f"{path} holds {array.dtype} images; translate takes uint8 (N, H, W) or (N, H, W, C)")
        return array, None
    return [path.read_bytes()], None


def write_translations(batch: np.ndarray, out: Path, names: list[str] | None) -> Path:
    """uint8 (N, H, W, C) -> ``out``: X.png holds the one image itself (a grid for several); a folder
    keeps the input PNGs' names; otherwise as ``write_images``."""
    from genserve import images

    if out.suffix == ".png" and len(batch) == 1:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(images.encode_png(batch[0]))
        return out
    if out.suffix in (".png", ".npy") or names is None:
        return write_images(batch, out)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, batch, strict=True):
        (out / name).write_bytes(images.encode_png(image))
    return out


def write_images(batch: np.ndarray, out: Path) -> Path:
    """uint8 (N, H, W, C) -> ``out``: a grid if it ends in .png, an array if .npy ((N, H, W) for one
    channel), else a folder of 000.png, 001.png, ..."""
    import numpy as np

    from genserve import images

    if out.suffix == ".png":
        return images.save_grid(batch, out)
    if out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, batch[..., 0] if batch.shape[-1] == 1 else batch)
        return out
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(batch) - 1)))
    for i, image in enumerate(batch):
        (out / f"{i:0{width}d}.png").write_bytes(images.encode_png(image))
    return out
