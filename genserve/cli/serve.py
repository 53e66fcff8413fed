"""``genserve serve``: serve the model folders over gRPC until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from genserve.cli.defaults import DEFAULT_MODELS

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads


def add_parser(sub: argparse._SubParsersAction) -> None:
    from genserve.serving.config import FRONTENDS, LOG_FORMATS, Backend, Precision  # no grpc, numpy or torch

    p = sub.add_parser("serve", help="serve the model folders over gRPC until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, help="server config file (TOML; see serving/config.py and docs/serving.md)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 = every interface)")
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
        "--engine-profile",
        type=Path,
        metavar="DIR",
        help="the engines' own profilers write into DIR, flushed at stop: ONNX Runtime's (one JSON per "
        "session) or torch.profiler's (torch, cuda: a Chrome trace); slows every call (default off)",
    )
    p.add_argument(
        "--frontend",
        choices=FRONTENDS,
        help="gRPC transport: native = gRPC C++ (bash serving/native/build.sh; make does it), grpcio = "
        "Python's; auto (default) = native if built",
    )
    p.add_argument("--grace-period", type=float, help="seconds queued and running calls get at shutdown (default 10)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at :PORT/metrics (default off)")
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, help="json: one JSON object per line, one per finished call (default text)"
    )
    lb = p.add_argument_group("behind a load balancer")
    lb.add_argument(
        "--drain-delay",
        type=float,
        metavar="S",
        help="at SIGTERM, report NOT_SERVING and keep accepting calls S seconds so balancers stop "
        "sending, then drain (default 0)",
    )
    lb.add_argument(
        "--max-connection-age", type=float, metavar="S", help="GOAWAY a connection after S seconds (default never)"
    )
    lb.add_argument(
        "--max-connection-age-grace", type=float, metavar="S", help="calls on an aged connection get S more seconds"
    )
    lb.add_argument("--keepalive-time", type=float, metavar="S", help="PING idle connections every S seconds")
    lb.add_argument(
        "--keepalive-timeout", type=float, metavar="S", help="close a connection whose PING is unanswered for S s"
    )
    tracing = p.add_argument_group("tracing (serving/tracing.py)")
    tracing.add_argument("--trace-rate", type=float, metavar="F", help="trace this fraction of calls, 0..1 (default 0)")
    tracing.add_argument(
        "--trace-file", type=Path, metavar="JSON", help="write traces as Chrome-trace JSON (open it in Perfetto)"
    )
    tracing.add_argument("--otlp-endpoint", metavar="HOST:PORT", help="send traces to this OTLP/gRPC collector")
    sec = p.add_argument_group("security")
    sec.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate chain")
    sec.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    sec.add_argument(
        "--tls-client-ca", type=Path, metavar="PEM", help="mutual TLS: require client certificates signed by this CA"
    )
    sec.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="require `authorization: Bearer <token>` on every call but health; one token per line, reloaded on SIGHUP",
    )
    sec.add_argument("--reflection", choices=["on", "off"], help="the gRPC reflection service (default on)")
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
        "drain_delay": args.drain_delay,
        "log_format": args.log_format,
        "connection": _given(
            max_connection_age=args.max_connection_age,
            max_connection_age_grace=args.max_connection_age_grace,
            keepalive_time=args.keepalive_time,
            keepalive_timeout=args.keepalive_timeout,
        ),
        "trace": _given(rate=args.trace_rate, file=args.trace_file, otlp_endpoint=args.otlp_endpoint),
        "security": _given(
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_token_file=args.auth_token_file,
            reflection=None if args.reflection is None else args.reflection == "on",
        ),
        "engine": {
            key: value
            for key, value in (
                ("precision", Precision(args.precision) if args.precision else None),
                ("cuda_graphs", None if args.cuda_graphs is None else args.cuda_graphs == "on"),
                ("compile", args.compile or None),
                ("device", args.device),
                ("engine_profile", args.engine_profile),
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


def _given(**values: object) -> dict[str, object]:
    """The flags that were given (not None)."""
    return {key: value for key, value in values.items() if value is not None}
