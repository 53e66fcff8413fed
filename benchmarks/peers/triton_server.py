"""NVIDIA Triton Inference Server (through nvidia-pytriton) serving genserve's model folders with
Triton's dynamic batcher: the peer of ``benchmarks/vs_triton.py``.

Runs under the Python 3.12 environment that ``benchmarks/peers/setup.sh`` makes:

    LD_LIBRARY_PATH=$(cat .bench/triton/libdir) .bench/triton/bin/python \\
        benchmarks/peers/triton_server.py --grpc-port 8001 --max-batch-size 64 --max-queue-delay-ms 0

Each model is bound with the tensor contract genserve's KServe v2 service has (SEED INT64 [1]
per row, optional STEPS INT32 [1] for diffusion, IMAGE UINT8 [H, W, C]), so perf_analyzer sends
both servers the same requests. The bound Python function runs genserve's own ``ModelRunner`` on
the same ``model.onnx`` with ONNX Runtime (same thread count), so both servers do identical model
work per image and return identical bytes: what differs is the serving layer. A diffusion batch
runs request-level (every row of the batch to the end, grouped by step count), which is how
Triton serves a sampling loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from genserve.manifest import discover
from genserve.serving.domain import GenerateRequest
from genserve.serving.runner import ModelRunner
from genserve.signature import ModelKind

MODELS = Path(__file__).resolve().parents[2] / "models"
log = logging.getLogger("triton_peer")


def sampler_function(runner: ModelRunner):
    @batch
    def infer(SEED: np.ndarray) -> dict[str, np.ndarray]:
        seeds = SEED.reshape(-1).astype(np.int64)
        return {"IMAGE": runner.sample_images(seeds, np.zeros(len(seeds), np.int64))}

    return infer


def diffusion_function(runner: ModelRunner, default_steps: int):
    @batch
    def infer(SEED: np.ndarray, STEPS: np.ndarray | None = None) -> dict[str, np.ndarray]:
        seeds = SEED.reshape(-1).astype(np.int64)
        steps = np.full(len(seeds), default_steps) if STEPS is None else STEPS.reshape(-1)
        c, h, w = runner.manifest.image_shape
        out = np.empty((len(seeds), h, w, c), np.uint8)
        for k in np.unique(steps):  # one request-level loop per step count, its rows batched together
            rows = np.flatnonzero(steps == k)
            request = GenerateRequest(runner.name, 1, steps=int(k))
            out[rows] = runner.diffuse_images(seeds[rows], np.zeros(len(rows), np.int64), request)
        return {"IMAGE": out}

    return infer


def bind(triton: Triton, folder: Path, max_batch_size: int, max_queue_delay_ms: float, threads: int) -> str:
    runner = ModelRunner(folder, intra_op_threads=threads)
    c, h, w = runner.manifest.image_shape
    inputs = [Tensor(name="SEED", dtype=np.int64, shape=(1,))]
    if runner.manifest.kind is ModelKind.DIFFUSION:
        inputs.append(Tensor(name="STEPS", dtype=np.int32, shape=(1,), optional=True))
        fn = diffusion_function(runner, runner.manifest.diffusion.default_steps)
    elif runner.manifest.kind is ModelKind.SAMPLER and runner.manifest.num_classes is None:
        fn = sampler_function(runner)
    else:
        return ""
    triton.bind(
        model_name=runner.name,
        infer_func=fn,
        inputs=inputs,
        outputs=[Tensor(name="IMAGE", dtype=np.uint8, shape=(h, w, c))],
        config=ModelConfig(
            max_batch_size=max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=int(max_queue_delay_ms * 1000)),
        ),
        strict=False,
    )
    return runner.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--models", type=Path, default=MODELS)
    parser.add_argument("--only", nargs="*", help="model names to serve (default: every unconditional one)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port)
    # pytriton protects the statistics endpoint with a token by default; tritonserver itself does
    # not, and perf_analyzer reads the statistics, so this loopback peer runs like tritonserver.
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        served = []
        for folder in discover(args.models):
            if args.only and folder.name not in args.only:
                continue
            name = bind(triton, folder, args.max_batch_size, args.max_queue_delay_ms, args.threads)
            if name:
                served.append(name)
        signal.signal(signal.SIGTERM, lambda *_: triton.stop())
        log.info("triton serving %s on grpc port %d", ", ".join(served), args.grpc_port)
        triton.serve()


if __name__ == "__main__":
    main()
