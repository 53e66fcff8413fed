"""Ray Serve serving genserve's model folders behind its gRPC ingress, with ``@serve.batch``: a peer
of ``benchmarks/vs_peers.py``.

Runs under the environment that ``benchmarks/peers/setup.sh ray`` makes, with the stubs of
``protos/peer.proto`` in ``--stubs`` (``clients.generate_stubs``):

    PYTHONPATH=STUBS:benchmarks/peers .bench/ray/bin/python benchmarks/peers/ray_server.py \\
        --stubs STUBS --temp-dir /tmp/genserve-ray --grpc-port 9000 --http-port 9100

It starts its own local Ray cluster (``address="local"``: never one that runs already; its files
under ``--temp-dir``; GCS on a free port; no dashboard) and tears it down on SIGTERM. One Serve
application per model (routed by the ``application`` metadata of each call), one replica each,
whose ``Generate`` hands each request to a ``@serve.batch`` method (max batch size 64, wait 0 s,
one batch at a time) that runs ``peer_models.PeerModel`` on a worker thread (the replica's event
loop keeps taking requests meanwhile, as genserve's batcher does while its engine thread runs).
The model work per batch is genserve's own (same ``model.onnx``, ONNX Runtime, one intra-op
thread per core).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

PEERS = Path(__file__).resolve().parent
log = logging.getLogger("ray_peer")


def deployment(max_batch_size: int, batch_wait_s: float, max_ongoing_requests: int):
    """The Serve deployment class (built here: ``serve`` is imported only once the stubs are on the path)."""
    from ray import serve

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=max_ongoing_requests,  # the default (5) would cap every batch at 5
        ray_actor_options={"num_cpus": 0},  # the ONNX Runtime threads are the model's own
    )
    class Generator:
        def __init__(self, folder: str, threads: int):
            from peer_models import PeerModel

            self.model = PeerModel(Path(folder), threads)
            self.generate_batch.set_max_batch_size(max_batch_size)
            self.generate_batch.set_batch_wait_timeout_s(batch_wait_s)

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
        async def generate_batch(self, requests: list) -> list:
            import peer_pb2

            seeds = np.array([r.seed for r in requests], np.int64)  # (B,)
            steps = np.array([r.steps for r in requests], np.int64)  # (B,), 0 = default
            out = await asyncio.to_thread(self.model.infer, seeds, steps)  # (B, H, W, C) uint8
            return [peer_pb2.PeerResponse(image=image.tobytes()) for image in out]

        async def Generate(self, request):  # noqa: N802 (the gRPC method's name)
            return await self.generate_batch(request)

    return Generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", type=Path, required=True, help="folder with peer_pb2.py and peer_pb2_grpc.py")
    parser.add_argument("--temp-dir", type=Path, required=True, help="this cluster's own Ray temp folder")
    parser.add_argument("--grpc-port", type=int, default=9000)
    parser.add_argument("--http-port", type=int, default=9100)
    parser.add_argument("--models", type=Path, default=PEERS.parents[1] / "models")
    parser.add_argument("--only", nargs="*", help="model names to serve (default: every unconditional one)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=0.0)
    parser.add_argument("--max-ongoing-requests", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The replicas and the gRPC proxy are Ray worker processes: they import the stubs and
    # peer_models from the PYTHONPATH they inherit from this process.
    path = [str(args.stubs.resolve()), str(PEERS)]
    os.environ["PYTHONPATH"] = os.pathsep.join(path + [p for p in [os.environ.get("PYTHONPATH")] if p])
    sys.path[:0] = path

    import ray
    from peer_models import servable_folders
    from ray import serve
    from ray.serve.config import gRPCOptions

    folders = {f.name: f for f in servable_folders(args.models, args.only)}  # each replica loads its own
    ray.init(
        address="local",
        _temp_dir=str(args.temp_dir.resolve()),
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=os.cpu_count(),
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
    )
    stop = threading.Event()  # after ray.init, which installs handlers of its own
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.http_port},
            grpc_options=gRPCOptions(
                port=args.grpc_port, grpc_servicer_functions=["peer_pb2_grpc.add_PeerServiceServicer_to_server"]
            ),
        )
        generator = deployment(args.max_batch_size, args.batch_wait_ms / 1000, args.max_ongoing_requests)
        for name, folder in folders.items():
            app = generator.options(name=name).bind(str(folder), args.threads)
            serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
        log.info("ray serving %s on grpc port %d", ", ".join(folders), args.grpc_port)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
        log.info("ray peer stopped")


if __name__ == "__main__":
    main()
