"""NVIDIA Triton Inference Server (through nvidia-pytriton) serving genserve's model folders with
Triton's dynamic batcher: a peer of ``benchmarks/vs_triton.py`` and ``benchmarks/vs_peers.py``.

Runs under the Python 3.12 environment that ``benchmarks/peers/setup.sh triton`` makes:

    LD_LIBRARY_PATH=$(cat .bench/triton/libdir) .bench/triton/bin/python \\
        benchmarks/peers/triton_server.py --grpc-port 8001 --max-batch-size 64 --max-queue-delay-ms 0

Each model is bound with the tensor contract genserve's KServe v2 service has (SEED INT64 [1]
per row, optional STEPS INT32 [1] for diffusion, IMAGE UINT8 [H, W, C]), so perf_analyzer and
KServe clients send both servers the same requests. The bound Python function runs
``peer_models.PeerModel`` (genserve's own ``ModelRunner``, the same ``model.onnx``, ONNX Runtime
with one intra-op thread per core), so every peer does identical model work per image and returns
identical bytes: what differs is the serving layer. One model instance, one Python backend stub
process per model.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

import numpy as np
from peer_models import MODELS, PeerModel, load
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

log = logging.getLogger("triton_peer")


def infer_function(model: PeerModel):
    if model.diffusion:

        @batch
        def diffuse(SEED: np.ndarray, STEPS: np.ndarray | None = None) -> dict[str, np.ndarray]:
            return {"IMAGE": model.infer(SEED, STEPS)}

        return diffuse

    @batch
    def sample(SEED: np.ndarray) -> dict[str, np.ndarray]:
        return {"IMAGE": model.infer(SEED)}

    return sample


def bind(triton: Triton, model: PeerModel, max_batch_size: int, max_queue_delay_ms: float) -> None:
    inputs = [Tensor(name="SEED", dtype=np.int64, shape=(1,))]
    if model.diffusion:
        inputs.append(Tensor(name="STEPS", dtype=np.int32, shape=(1,), optional=True))
    triton.bind(
        model_name=model.name,
        infer_func=infer_function(model),
        inputs=inputs,
        outputs=[Tensor(name="IMAGE", dtype=np.uint8, shape=model.image_shape)],
        config=ModelConfig(
            max_batch_size=max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=int(max_queue_delay_ms * 1000)),
        ),
        strict=False,
    )


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

    models = load(args.models, args.only, args.threads)
    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port)
    # pytriton protects the statistics endpoint with a token by default; tritonserver itself does
    # not, and perf_analyzer reads the statistics, so this loopback peer runs like tritonserver.
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        for model in models:
            bind(triton, model, args.max_batch_size, args.max_queue_delay_ms)
        signal.signal(signal.SIGTERM, lambda *_: triton.stop())
        log.info("triton serving %s on grpc port %d", ", ".join(m.name for m in models), args.grpc_port)
        triton.serve()


if __name__ == "__main__":
    main()
