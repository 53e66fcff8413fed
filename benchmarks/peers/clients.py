"""One async gRPC client per serving API the peer benchmark speaks, all with the same call: image 0
of one seed, uint8 (H, W, C). The only module of the benchmarks that touches the peers' protobuf.

- ``genserve``: genserve's own ``GenerationService.Generate`` (raw images), through
  ``genserve.serving.convert`` like every genserve client;
- ``triton``: KServe v2 ``GRPCInferenceService.ModelInfer`` (SEED INT64 [1, 1], STEPS INT32 [1, 1]
  for diffusion), with the stubs ``tritonclient`` ships;
- ``ray``: the Ray Serve peer's ingress, ``protos/peer.proto``, one Serve application per model
  (chosen by the ``application`` metadata);
- ``torchserve``: TorchServe's ``InferenceAPIsService.Predictions`` (``protos/torchserve_inference.proto``,
  the part of TorchServe's ``inference.proto`` that is called), ``input`` {seed, steps} as ASCII.

The stubs of the two .proto files are generated at run time into a folder of the caller's
(``generate_stubs``), never committed; the Ray peer imports the same files.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np

from genserve.serving import convert
from genserve.serving.domain import GenerateRequest
from genserve.serving.pb import genserve_pb2_grpc

PROTOS = Path(__file__).resolve().parent / "protos"
CHANNELS = 4  # connections per client, used round robin (as genserve's load generator does)
# Channels with equal arguments share one connection otherwise, and the pool would be one channel.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def generate_stubs(out: Path) -> Path:
    """``peer_pb2*.py`` and ``torchserve_inference_pb2*.py`` into ``out`` (grpcio-tools, the dev extra)."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    for proto in sorted(PROTOS.glob("*.proto")):
        args = ["protoc", f"-I{PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}", proto.name]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return out


def stubs(out: Path, name: str) -> tuple[ModuleType, ModuleType]:
    """The generated ``name_pb2`` and ``name_pb2_grpc`` modules in ``out``."""
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc")


class Client:
    """A pool of ``CHANNELS`` insecure channels to ``target``; ``generate`` is the API's call."""

    def __init__(self, target: str, shapes: dict[str, tuple[int, int, int]]):
        self.target = target
        self.shapes = shapes  # model -> (H, W, C), where the API does not say it
        self.channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(CHANNELS)]
        self.stubs = [self.stub(c) for c in self.channels]

    def stub(self, channel: grpc.aio.Channel):
        raise NotImplementedError

    async def generate(self, model: str, seed: int, steps: int | None, call: int = 0, timeout: float = 120.0):
        """Image 0 of ``seed`` (``steps``: diffusion steps, None = the model's default) on channel
        ``call % CHANNELS``: uint8 (H, W, C). Raises grpc.aio.AioRpcError."""
        raise NotImplementedError

    async def images(self, model: str, seeds: Sequence[int], steps: int | None) -> np.ndarray:
        """One image per seed, one call each, in order: uint8 (N, H, W, C) (the parity check)."""
        return np.stack([await self.generate(model, s, steps, i) for i, s in enumerate(seeds)])

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class GenserveClient(Client):
    def stub(self, channel):
        return genserve_pb2_grpc.GenerationServiceStub(channel)

    async def generate(self, model, seed, steps, call=0, timeout=120.0):
        request = GenerateRequest(model, 1, seed=seed, steps=steps)
        message = convert.generate_request_to_proto(request, convert.ImageEncoding.RAW)
        response = await self.stubs[call % CHANNELS].Generate(message, timeout=timeout)
        return convert.images_from_response(response)[0]


class KServeClient(Client):
    """Triton (and any KServe v2 server) with genserve's KServe tensor contract."""

    def stub(self, channel):
        from tritonclient.grpc import service_pb2_grpc

        return service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def generate(self, model, seed, steps, call=0, timeout=120.0):
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="SEED", datatype="INT64", shape=[1, 1])
        request.raw_input_contents.append(np.int64(seed).tobytes())
        if steps is not None:
            request.inputs.add(name="STEPS", datatype="INT32", shape=[1, 1])
            request.raw_input_contents.append(np.int32(steps).tobytes())
        response = await self.stubs[call % CHANNELS].ModelInfer(request, timeout=timeout)
        shape = tuple(response.outputs[0].shape)[1:]  # (H, W, C)
        return np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(shape)


class RayClient(Client):
    """The Ray Serve peer's ingress; needs ``generate_stubs`` output in ``stub_dir``."""

    def __init__(self, target: str, shapes: dict[str, tuple[int, int, int]], stub_dir: Path):
        self.pb2, self.pb2_grpc = stubs(stub_dir, "peer")
        super().__init__(target, shapes)

    def stub(self, channel):
        return self.pb2_grpc.PeerServiceStub(channel)

    async def generate(self, model, seed, steps, call=0, timeout=120.0):
        request = self.pb2.PeerRequest(seed=seed, steps=steps or 0)
        response = await self.stubs[call % CHANNELS].Generate(
            request, metadata=(("application", model),), timeout=timeout
        )
        return np.frombuffer(response.image, np.uint8).reshape(self.shapes[model])


class TorchServeClient(Client):
    """TorchServe's gRPC inference API; needs ``generate_stubs`` output in ``stub_dir``."""

    def __init__(self, target: str, shapes: dict[str, tuple[int, int, int]], stub_dir: Path):
        self.pb2, self.pb2_grpc = stubs(stub_dir, "torchserve_inference")
        super().__init__(target, shapes)

    def stub(self, channel):
        return self.pb2_grpc.InferenceAPIsServiceStub(channel)

    async def generate(self, model, seed, steps, call=0, timeout=120.0):
        inputs = {"seed": str(seed).encode()}
        if steps is not None:
            inputs["steps"] = str(steps).encode()
        request = self.pb2.PredictionsRequest(model_name=model, input=inputs)
        response = await self.stubs[call % CHANNELS].Predictions(request, timeout=timeout)
        return np.frombuffer(response.prediction, np.uint8).reshape(self.shapes[model])


def client(server: str, target: str, shapes: dict[str, tuple[int, int, int]], stub_dir: Path) -> Client:
    """The client of ``server`` (genserve, triton, ray, torchserve) at ``target``; call inside an event loop."""
    if server == "genserve":
        return GenserveClient(target, shapes)
    if server == "triton":
        return KServeClient(target, shapes)
    if server == "ray":
        return RayClient(target, shapes, stub_dir)
    if server == "torchserve":
        return TorchServeClient(target, shapes, stub_dir)
    raise ValueError(f"no client for {server!r}")
