"""The ``genserve`` command: train, eval, export, serve, and the client verbs."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from genserve.serving.domain import ModelInfo

DEFAULT_SERVER = "127.0.0.1:50051"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = REPO_ROOT / "models"
DEFAULT_CHECKPOINTS = REPO_ROOT / "checkpoints"
# The evaluation classifier is small and every eval needs it, so it is committed.
DEFAULT_CLASSIFIER = REPO_ROOT / "assets" / "classifier-mnist"

log = logging.getLogger("genserve")


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


# Families trained through ``--set``: module under genserve.training, its config class and train function.
FAMILY_TRAINERS = {
    "ddpm": ("ddpm", "DDPMTrainConfig", "train_ddpm"),
    "dcgan": ("dcgan", "DCGANTrainConfig", "train_dcgan"),
    "gaussian": ("gaussian", "GaussianTrainConfig", "train_gaussian"),
    "vae": ("vae", "VAETrainConfig", "train_vae"),
    "cgan": ("cgan", "CGANTrainConfig", "train_cgan"),
    "pix2pix": ("pix2pix", "Pix2PixTrainConfig", "train_pix2pix"),
    "srresnet": ("superres", "SRResNetTrainConfig", "train_srresnet"),
    "srgan": ("superres", "SRGANTrainConfig", "train_srgan"),
    "cyclegan": ("cyclegan", "CycleGANTrainConfig", "train_cyclegan"),
}


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


# Served names of each exportable family. The checkpoint folder is the served name, except for
# the models described in export.onnx_export.SERVED, which name their own.
EXPORTS = {
    "ddpm": ("ddpm-mnist",),
    "ddpm-cond": ("ddpm-cond-mnist",),
    "dcgan": ("dcgan-mnist",),
    "gaussian": ("gaussian-mnist",),
    "vae": ("vae-mnist", "vae-mnist-reconstruct"),
    "cgan": ("cgan-mnist",),
    "pix2pix": ("pix2pix-edges2mnist",),
    "srresnet": ("srresnet-mnist-x4",),
    "srgan": ("srgan-mnist-x4",),
    "cyclegan": ("cyclegan-mnist2digits", "cyclegan-digits2mnist"),
}


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


IN_PROCESS = "in-process onnxruntime"


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

        with GenserveClient(args.server) as client:
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

    metrics, tiles = evaluate_task(folder, args.num_images, args.seed, Evaluator(), args.steps, args.guidance)
    print(json.dumps({"model": folder.name, **metrics}, indent=2))
    if args.grid:
        images.save_grid(tiles, args.grid, nrow=10)
    if args.update_manifest:
        settings = {"num_images": args.num_images, "seed": args.seed, "source": IN_PROCESS}
        settings.update({k: v for k, v in (("steps", args.steps), ("guidance", args.guidance)) if v is not None})
        record_metrics(folder, metrics, settings)
        log.info("recorded the metrics in %s/manifest.json", folder)
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Serving needs no torch (unless --backend torch or cuda, which import it when the models load).
    from genserve.serving.config import ConfigError, load_config
    from genserve.serving.engines import Backend, Precision
    from genserve.serving.server import StartupError, run

    logging.getLogger("grpc").setLevel(logging.INFO)  # its DEBUG lines (one per call) drown ours under -v
    overrides = {
        "models_dir": args.models,
        "host": args.host,
        "port": args.port,
        "backend": Backend(args.backend) if args.backend else None,
        "frontend": args.frontend,
        "grace_period": args.grace_period,
        "metrics_port": args.metrics_port,
        "engine": {
            key: value
            for key, value in (
                ("precision", Precision(args.precision) if args.precision else None),
                ("cuda_graphs", None if args.cuda_graphs is None else args.cuda_graphs == "on"),
                ("compile", args.compile or None),
                ("device", args.device),
            )
            if value is not None
        },
    }
    model_overrides = {
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "max_queue_size": args.max_queue_size,
        "instances": args.instances,
        "diffusion_batching": args.diffusion_batching,
    }
    try:
        config = load_config(args.config, overrides, model_overrides, default_models_dir=DEFAULT_MODELS)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        run(config)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


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

    with GenserveClient(args.server, timeout=args.timeout) as client:
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
    if info.default_guidance is not None:
        details.append(f"--guidance 0..20, default {info.default_guidance:g}")
    line = f"{info.name:<24} {info.kind.value:<10} {shape:<20} {', '.join(details)}"
    return line + (f"\n    input: {info.input_description}" if info.input_description else "")


@_rpc_errors
def _generate(args: argparse.Namespace) -> int:
    from genserve.client import GenserveClient

    with GenserveClient(args.server, timeout=args.timeout) as client:
        options = dict(
            seed=args.seed,
            steps=args.steps,
            sampler=args.sampler,
            eta=args.eta,
            label=args.label,
            interpolate_to_seed=args.interpolate_to,
            guidance=args.guidance,
        )
        if args.stream:
            batch = _generate_with_progress(client, args.model, args.num_images, options)
        else:
            batch = client.generate(args.model, args.num_images, **options)
    written = write_images(batch, args.out)
    log.info("wrote %d images from %s to %s", len(batch), args.model, written)
    return 0


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
    with GenserveClient(args.server, timeout=args.timeout) as client:
        batch = client.translate(args.model, sources)
    written = write_translations(batch, args.out, names)
    log.info("wrote %d images from %s to %s", len(batch), args.model, written)
    return 0


def read_translate_input(path: Path) -> tuple[np.ndarray | list[bytes], list[str] | None]:
    """``--in`` of ``genserve translate``: a uint8 .npy (N, H, W[, C]) (sent as one raw tensor), one
    PNG or a folder of PNGs (sent as the files are, by name order); and the PNGs' names, if any."""
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


def _bench_load(args: argparse.Namespace) -> int:
    from genserve.loadgen import LoadSpec, plot_report, run_load

    try:
        spec = LoadSpec(
            args.server,
            args.model,
            concurrency=args.concurrency,
            rate=args.rate,
            duration=args.duration,
            num_images=args.num_images,
            steps=None if not args.steps else args.steps[0] if len(args.steps) == 1 else tuple(args.steps),
            timeout_ms=args.timeout_ms,
            priority=args.priority,
            warmup=args.warmup,
            seed=args.seed,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        report = run_load(spec, progress=True)
    except ConnectionError as exc:
        log.error("%s", exc)
        return 1
    print(report.summary())
    if args.json:
        print(f"wrote {report.write_json(args.json)}")
    if args.plot:
        print(f"wrote {plot_report(report, args.plot)}")
    return 0


def _bench_sampler(args: argparse.Namespace) -> int:
    from genserve.bench_sampler import SamplerBenchConfig, plot_report, run_sampler_benchmark, summary, write_report

    folder = (args.models or DEFAULT_MODELS) / args.model
    try:
        threads = {"threads": args.threads} if args.threads else {}  # default: os.cpu_count()
        config = SamplerBenchConfig(folder, batch=args.batch, steps=args.steps, rounds=args.rounds, **threads)
        report = run_sampler_benchmark(config)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    except ImportError as exc:  # diffusers, the optional [bench] extra
        log.error("%s", exc)
        return 1
    print(summary(report))
    print(f"wrote {write_report(report, args.json)}")
    print(f"wrote {plot_report(report, args.json.with_suffix('.png'))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("eval", help="judge a model's samples with the evaluation classifier (FID, confidence)")
    p.add_argument("model", type=Path, help="model name (folder under --models) or a model folder path")
    p.add_argument("--models", type=Path, help=f"model repository (default {DEFAULT_MODELS})")
    p.add_argument(
        "-n", "--num-images", type=int, help="samples (default 100), or held-out inputs for a translator (default all)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="diffusion steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (class-conditional diffusion; default: the model's)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--server", help="HOST:PORT: sample through a running server instead of in-process")
    source.add_argument("--images", type=Path, help="judge a uint8 .npy of (N, 28, 28) images instead of sampling")
    p.add_argument("--grid", type=Path, help="also write the first 100 samples as a PNG grid")
    p.add_argument("--update-manifest", action="store_true", help="record the metrics in the model's manifest")
    p.add_argument(
        "--spread",
        type=int,
        default=0,
        metavar="K",
        help="DDPM/DCGAN in-process: also the confident fraction of -n samples at each of seeds 1..K",
    )
    p.set_defaults(func=_eval)

    from genserve.schedule import Sampler
    from genserve.serving.engines import Backend, Precision

    p = sub.add_parser("serve", help="serve the model folders over gRPC until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, help="server config file (TOML; see serving/config.py and the README)")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port to bind; 0 = any free port (default 50051)")
    p.add_argument("--models", type=Path, help=f"model repository (default {DEFAULT_MODELS})")
    p.add_argument("--backend", choices=[b.value for b in Backend], help="engine backend (default onnxruntime)")
    engines = p.add_argument_group("engines (cuda, torch, tensorrt backends)")
    engines.add_argument(
        "--precision",
        choices=[x.value for x in Precision],
        help="arithmetic of every model's engine (default fp32; a model's own `precision` setting wins)",
    )
    engines.add_argument(
        "--cuda-graphs", choices=["on", "off"], help="cuda: capture a CUDA graph per batch bucket at load (default on)"
    )
    engines.add_argument("--compile", action="store_true", help="torch/cuda: torch.compile the networks before capture")
    engines.add_argument("--device", help="torch/cuda: the torch device (default cuda, or cpu for torch)")
    p.add_argument(
        "--frontend",
        choices=["auto", "native", "grpcio"],
        help="gRPC transport: native = gRPC C++ (bash serving/native/build.sh; make does it), grpcio = "
        "Python's; auto (default) = native if built",
    )
    p.add_argument("--grace-period", type=float, help="seconds queued and running calls get at shutdown (default 10)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at :PORT/metrics (default off)")
    batching = p.add_argument_group("batching and queueing (every model; overrides the config file)")
    batching.add_argument("--max-batch-size", type=int, help="images per engine call (default: the engine's limit)")
    batching.add_argument("--max-queue-delay-ms", type=float, help="longest wait for a fuller batch (default 0)")
    batching.add_argument(
        "--max-queue-size", type=int, help="requests waiting per model before rejecting (default 256)"
    )
    batching.add_argument("--instances", type=int, help="engine instances per model, run concurrently (default 1)")
    batching.add_argument(
        "--diffusion-batching",
        choices=["step", "request"],
        help="diffusion: join the running batch at every step (default) or only when it empties",
    )
    p.set_defaults(func=_serve)

    def client_parser(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default {DEFAULT_SERVER})")
        p.add_argument("--timeout", type=float, help="deadline of the call in seconds (default none)")
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
        help="classifier-free guidance scale (class-conditional diffusion; 1 = no guidance; default: the model's)",
    )
    p.add_argument(
        "--interpolate-to",
        type=int,
        metavar="SEED",
        help="samplers: -n frames along the slerp from image 0 of --seed to image 0 of SEED",
    )
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

    bench = sub.add_parser("bench", help="benchmarks: load against a running server, sampler loops in-process")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser(
        "load",
        help="drive a server with closed-loop or open-loop (Poisson) load; report throughput and latency",
        description="Closed loop (--concurrency N): N workers, each sending its next request when the last "
        "is answered. Open loop (--rate R): Poisson arrivals at R requests/s, however many are outstanding. "
        "Requests sent during --warmup are not counted; those in flight at the end are awaited and counted.",
    )
    p.add_argument(
        "--server", default=DEFAULT_SERVER, metavar="HOST:PORT", help=f"the server (default {DEFAULT_SERVER})"
    )
    p.add_argument("--model", required=True, metavar="NAME", help="a name from `genserve models`")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, metavar="N", help="closed loop: requests outstanding at all times")
    load.add_argument("--rate", type=float, metavar="R", help="open loop: mean arrivals per second (Poisson)")
    p.add_argument(
        "--duration", type=float, required=True, metavar="S", help="seconds of measured load, after the warmup"
    )
    p.add_argument("-n", "--num-images", type=int, default=1, metavar="K", help="images per request (default 1)")
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        metavar="K",
        help="diffusion steps; several are used in turn (default: the model's)",
    )
    p.add_argument("--timeout-ms", type=float, metavar="T", help="server-side deadline of each request (default none)")
    p.add_argument(
        "--priority", type=int, default=0, metavar="P", help="queue priority level, 1 = first (default 0: the model's)"
    )
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="seconds of uncounted load first (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the open-loop arrival times (default 0)")
    p.add_argument(
        "--json", type=Path, metavar="OUT.json", help="write the report (statistics and per-second timeline) as JSON"
    )
    p.add_argument(
        "--plot", type=Path, metavar="OUT.png", help="write a PNG of latency by send time and per-second throughput"
    )
    p.set_defaults(func=_bench_load)

    p = bench_sub.add_parser(
        "sampler",
        help="images/s of the fused sampler vs diffusers' DDPMScheduler loop and Algorithm 2 (in-process)",
        description="Time three DDPM sampling loops on the same UNet weights, batch, step count and threads: "
        "Hugging Face diffusers' DDPMScheduler loop and a literal Ho et al. Algorithm 2 loop (both PyTorch eager), "
        "and genserve's fused ONNX step loop as served; then the median of one bare engine step, for the "
        "fused loop's overhead. Needs the optional extra: pip install -e '.[bench]'.",
    )
    p.add_argument("--model", default="ddpm-mnist", metavar="NAME", help="diffusion model folder (default ddpm-mnist)")
    p.add_argument("--models", type=Path, metavar="DIR", help=f"model repository (default {DEFAULT_MODELS})")
    p.add_argument("--batch", type=int, default=16, metavar="B", help="images per loop (default 16)")
    p.add_argument(
        "--steps", type=int, default=1000, metavar="K", help="sampling steps (default 1000, the full schedule)"
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch and onnxruntime intra-op threads (default: os.cpu_count())"
    )
    p.add_argument(
        "--rounds", type=int, default=3, metavar="R", help="interleaved timings of each loop; medians kept (default 3)"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "sampler.json",
        metavar="OUT.json",
        help="report path; the bar chart goes next to it as OUT.png (default benchmarks/results/sampler.json)",
    )
    p.set_defaults(func=_bench_sampler)
    return parser


EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a writer that SIGPIPE ended


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from genserve.manifest import ManifestError

    try:
        return args.func(args)
    except (ManifestError, FileNotFoundError) as exc:  # a missing or broken model/checkpoint folder
        log.error("%s", exc)
        return 1
    except BrokenPipeError:  # the reader left early (`genserve models | head -1`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail too
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
