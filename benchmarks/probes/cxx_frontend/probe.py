"""Feasibility probe for issue 6: how fast is a compiled KServe front end on this machine?

    bash benchmarks/probes/cxx_frontend/build.sh        # Debian's gRPC C++ (apt), protoc, g++
    python -m benchmarks.probes.cxx_frontend.probe      # ~1 min; results/cxx_frontend_probe.json

``front.cc`` is a C++ gRPC server of the KServe v2 protocol that parses each ModelInfer request
and answers with a response genserve gave for ``dcgan-mnist`` (captured at the start), doing no
model work: the cost of the front end alone. perf_analyzer runs against it and against genserve
(the real thing) at concurrency 16, interleaved, twice each. Not product code and not a
comparison of servers: it bounds what a compiled front end would leave for the engine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from benchmarks.serverproc import start_server
from benchmarks.vs_triton import BENCH, RESULTS, input_data, perf_analyzer, tools_env

MODEL = "dcgan-mnist"
CONCURRENCY = 16
BUILD = BENCH / "cxx_frontend"


def capture(target: str, folder: Path) -> None:
    """genserve's answers to what perf_analyzer asks, serialized, for the C++ server to replay."""
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        (folder / "meta.bin").write_bytes(stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL)).SerializeToString())
        (folder / "config.bin").write_bytes(stub.ModelConfig(pb.ModelConfigRequest(name=MODEL)).SerializeToString())
        request = pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="SEED", datatype="INT64", shape=[1, 1])
        request.raw_input_contents.append(np.zeros((1, 1), dtype=np.int64).tobytes())
        (folder / "infer.bin").write_bytes(stub.ModelInfer(request).SerializeToString())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    if not (BUILD / "front").exists():
        raise SystemExit("the probe is not built: run `bash benchmarks/probes/cxx_frontend/build.sh` first")
    env = tools_env()
    genserve = start_server()
    front = None
    try:
        capture(genserve.target, BUILD)
        port = free_port()
        front = subprocess.Popen([str(BUILD / "front"), f"127.0.0.1:{port}", str(BUILD)], stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            data = input_data(Path(tmp) / "data.json", steps=None)
            servers = (("compiled front end, no model work", f"127.0.0.1:{port}"), ("genserve", genserve.target))
            for round_ in (1, 2):
                for name, target in servers:
                    row = perf_analyzer(target, MODEL, CONCURRENCY, data, Path(tmp) / f"{round_}.csv", 4000, env)
                    runs.append(
                        {
                            "server": name,
                            "round": round_,
                            "throughput": float(row["Inferences/Second"]),
                            "p99_ms": float(row["p99 latency"]) / 1000,
                        }
                    )
                    last = runs[-1]
                    print(f"{name:36s} round {round_}: {last['throughput']:9.1f} req/s  p99 {last['p99_ms']:.2f} ms")
    finally:
        if front is not None:
            front.terminate()
            front.wait(timeout=10)
        genserve.stop()
    report = {
        "what": f"perf_analyzer, {MODEL}, concurrency {CONCURRENCY}: a compiled KServe front end answering "
        "canned responses (no model work) against genserve, interleaved",
        "runs": runs,
    }
    out = RESULTS / "cxx_frontend_probe.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
