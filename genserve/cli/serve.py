"""``genserve serve``: serve the model folders over gRPC until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from genserve.cli.defaults import DEFAULT_MODELS

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads


def add_parser(sub: argparse._SubParsersAction) -> None:
    from genserve.serving.config import FRONTENDS, Backend, Precision  # no grpc, numpy or torch: cheap

    p = sub.add_parser("serve", help="serve the model folders over gRPC until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, help="server config file (TOML; see serving/config.py and docs/serving.md)")
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
        choices=FRONTENDS,
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


def _serve(args: argparse.Namespace) -> int:
    # Serving needs no torch (unless --backend torch or cuda, which import it when the models load).
    from genserve.serving.config import Backend, ConfigError, Precision, load_config
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
