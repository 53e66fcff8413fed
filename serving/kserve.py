"""The KServe v2 / Open Inference Protocol gRPC API (``inference.GRPCInferenceService``), on the
same server and models as genserve's own API.

The service and messages are Triton's, from NVIDIA's own generated modules in the
``tritonclient`` package (``tritonclient.grpc.service_pb2``, ``service_pb2_grpc``,
``model_config_pb2``; nothing is vendored or generated here, see protos/README.md), so Triton's
client and other KServe v2 clients work against genserve unchanged. This module is the KServe
counterpart of ``servicer`` and ``convert`` together: it is the only module that imports
tritonclient's generated code (the KServe conversions live here, in one module of their own).
Like every servicer it raises domain errors and never sets a status code
(``interceptors.ErrorInterceptor`` maps them).

Tensor contract, every model (``max_batch_size`` = the model's ``max_images``, batch dim first):

    input  SEED   INT64  dims [1]   required; row r asks for one image, made from seed SEED[r]
    input  STEPS  INT32  dims [1]   diffusion models only, optional; the same value on every row;
                                    absent = the model's default steps
    output IMAGE  UINT8  dims [H, W, C]

Row r of IMAGE is byte for byte image 0 of genserve's own ``Generate(model, num_images=1,
seed=SEED[r], steps=STEPS)``. Each row is submitted to the model's scheduler as its own
one-image request, all of them concurrently, so the dynamic batcher (one-pass models) or the
step scheduler (diffusion) batches them with each other and with every other client's work; each
row counts against the model's ``max_queue_size``. The call's gRPC deadline bounds every row, and
the request parameter ``timeout`` (microseconds, as ``tritonclient``'s ``timeout=`` sends it)
adds a queue timeout; other request parameters are ignored.

Inputs come as little-endian ``raw_input_contents`` (what Triton's clients send) or in the typed
``contents`` fields (``int64_contents`` for SEED, ``int_contents`` for STEPS); the output is
returned in ``raw_output_contents``, which is what Triton's clients read. Shared-memory tensors,
streaming inference and the repository-control, shared-memory, trace and log RPCs are not
supported (UNIMPLEMENTED, the generated base class's answer).

ModelStatistics: ``success`` and ``fail`` count this API's ModelInfer calls with their wall time.
``queue``, ``compute_infer``, ``execution_count`` and ``inference_count`` are the model's
scheduler totals (``metrics.Totals``), which cover the requests of both APIs because they share
the same engine calls: queue time once per request (each ModelInfer row is one request),
compute time as Triton attributes it to batched requests, executions = engine calls, inferences
= engine rows. Compute input and output run inside the engine call: counted, with zero time
(their time is in compute_infer).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import numpy as np

# NVIDIA's generated code for the protocol (importing it also imports the tritonclient.grpc
# client package: grpc, numpy and tritonclient.utils, no torch). It registers in protobuf's
# default descriptor pool, so server reflection describes the service like genserve's own.
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from genserve.serving.config import ServerConfig
from genserve.serving.domain import GenerateRequest, ModelInfo
from genserve.serving.errors import InvalidArgument, NotFound
from genserve.serving.metrics import Metrics, Totals
from genserve.serving.scheduler import ModelScheduler
from genserve.serving.servicer import ModelRegistry
from genserve.signature import ModelKind

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # "inference.GRPCInferenceService"
SERVER_NAME = "genserve"
# Triton protocol extensions genserve implements in full: the ModelConfig and ModelStatistics RPCs.
EXTENSIONS = ("model_configuration", "statistics")
SEED, STEPS, IMAGE = "SEED", "STEPS", "IMAGE"
READY = "READY"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract: KServe datatype, Triton config type, little-endian NumPy dtype."""

    name: str
    datatype: str
    config_type: int
    dtype: np.dtype
    contents_field: str = ""  # where typed contents carry it (inputs only)
    optional: bool = False


_SEED = TensorSpec(SEED, "INT64", mc.TYPE_INT64, np.dtype("<i8"), "int64_contents")
_STEPS = TensorSpec(STEPS, "INT32", mc.TYPE_INT32, np.dtype("<i4"), "int_contents", optional=True)
_IMAGE = TensorSpec(IMAGE, "UINT8", mc.TYPE_UINT8, np.dtype(np.uint8))


def input_specs(info: ModelInfo) -> tuple[TensorSpec, ...]:
    return (_SEED, _STEPS) if info.kind is ModelKind.DIFFUSION else (_SEED,)


def image_dims(info: ModelInfo) -> list[int]:
    """The output's per-row dims [H, W, C] (genserve images are uint8 HWC; ``image_shape`` is CHW)."""
    c, h, w = info.image_shape
    return [h, w, c]


def platform(config: ServerConfig) -> str:
    return f"genserve_{config.backend.value}"


# --- ModelInfer: request -> domain ---------------------------------------------------------------


@dataclass(frozen=True)
class InferCall:
    """A decoded ModelInferRequest: one image per seed, with these steps and this queue timeout."""

    seeds: tuple[int, ...]
    steps: int | None
    timeout: float | None  # seconds

    def requests(self, model: str) -> list[GenerateRequest]:
        """Row r as genserve's own Generate(model, num_images=1, seed=seeds[r], steps=steps)."""
        return [GenerateRequest(model, 1, seed=s, steps=self.steps, timeout=self.timeout) for s in self.seeds]


def _describe(specs: Iterable[TensorSpec]) -> str:
    return ", ".join(f"{s.name} ({s.datatype} [-1, 1]{', optional' if s.optional else ''})" for s in specs)


def _rows(name: str, model: str, shape: list[int], max_batch: int) -> int:
    """Rows of an input of dims [1]; InvalidArgument unless ``shape`` is [B, 1] with 1 <= B <= max_batch."""
    if len(shape) != 2 or shape[1] != 1:
        raise InvalidArgument(
            f"input {name} of model {model} must have shape [batch, 1] (dims [1] with a batch dimension), got {shape}"
        )
    if not 1 <= shape[0] <= max_batch:
        raise InvalidArgument(
            f"input {name} of model {model} has batch size {shape[0]}; it must be in [1, {max_batch}] "
            f"(max_batch_size of {model})"
        )
    return shape[0]


def _values(
    tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec, raw: bytes | None, rows: int
) -> np.ndarray:
    """The ``rows`` values of one input, from its raw bytes or its typed contents."""
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgument(f"input {spec.name} has both raw_input_contents and contents; send one of them")
        expected = rows * spec.dtype.itemsize
        if len(raw) != expected:
            raise InvalidArgument(
                f"input {spec.name} ({spec.datatype} {list(tensor.shape)}) needs {expected} bytes of "
                f"raw_input_contents, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=spec.dtype)
    values = getattr(tensor.contents, spec.contents_field)
    if len(values) != rows:
        raise InvalidArgument(
            f"input {spec.name} ({spec.datatype} {list(tensor.shape)}) needs {rows} values in "
            f"contents.{spec.contents_field}, got {len(values)} (or send raw_input_contents)"
        )
    return np.asarray(values, dtype=spec.dtype)


def infer_call_from_proto(msg: pb.ModelInferRequest, info: ModelInfo) -> InferCall:
    """Check a ModelInferRequest against the model's tensor contract and decode it; InvalidArgument
    naming the problem and what is allowed."""
    model, specs = info.name, {s.name: s for s in input_specs(info)}
    raws = list(msg.raw_input_contents)
    if raws and len(raws) != len(msg.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raws)} entries for {len(msg.inputs)} inputs; send one per input, in order"
        )
    tensors: dict[str, tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]] = {}
    for i, tensor in enumerate(msg.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"model {model} has no input named {tensor.name!r}; its inputs: {_describe(specs.values())}"
            )
        if tensor.name in tensors:
            raise InvalidArgument(f"input {tensor.name} is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"input {spec.name} of model {model} must be {spec.datatype}, got {tensor.datatype or '(none)'}"
            )
        if "shared_memory_region" in tensor.parameters:
            raise InvalidArgument(f"input {spec.name}: shared memory is not supported by genserve; send the data")
        tensors[tensor.name] = (tensor, raws[i] if raws else None)
    if SEED not in tensors:
        raise InvalidArgument(f"model {model} needs input {SEED}; its inputs: {_describe(specs.values())}")

    seed_tensor, seed_raw = tensors[SEED]
    rows = _rows(SEED, model, list(seed_tensor.shape), info.max_images)
    seeds = _values(seed_tensor, _SEED, seed_raw, rows)
    steps = None
    if STEPS in tensors:
        steps_tensor, steps_raw = tensors[STEPS]
        shape = list(steps_tensor.shape)
        if _rows(STEPS, model, shape, info.max_images) != rows:
            raise InvalidArgument(f"input {STEPS} has shape {shape} but {SEED} has {rows} rows; give both the same")
        values = _values(steps_tensor, _STEPS, steps_raw, rows)
        if np.any(values != values[0]):
            raise InvalidArgument(f"input {STEPS} must be the same on every row, got {values.tolist()}")
        steps = int(values[0])
    return InferCall(tuple(int(s) for s in seeds), steps, _timeout(msg))


def _timeout(msg: pb.ModelInferRequest) -> float | None:
    """The request parameter ``timeout`` (int64 microseconds, Triton's), in seconds; 0 or absent = none."""
    if "timeout" not in msg.parameters:
        return None
    param = msg.parameters["timeout"]
    if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 0:
        raise InvalidArgument("parameter timeout must be an int64 number of microseconds >= 0 (0 = none)")
    return param.int64_param / 1e6 or None


def requested_outputs(msg: pb.ModelInferRequest, model: str) -> None:
    """InvalidArgument for a requested output the model does not have (IMAGE is its only one)."""
    for output in msg.outputs:
        if output.name != IMAGE:
            raise InvalidArgument(f"model {model} has no output named {output.name!r}; its outputs: {IMAGE} (UINT8)")
        if "shared_memory_region" in output.parameters:
            raise InvalidArgument(f"output {IMAGE}: shared memory is not supported by genserve")


def infer_response_to_proto(msg: pb.ModelInferRequest, info: ModelInfo, images: np.ndarray) -> pb.ModelInferResponse:
    """uint8 images (B, H, W, C) -> ModelInferResponse with IMAGE in raw_output_contents."""
    data = np.ascontiguousarray(images, dtype=np.uint8)
    return pb.ModelInferResponse(
        model_name=info.name,
        model_version=info.version,
        id=msg.id,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=IMAGE, datatype=_IMAGE.datatype, shape=data.shape)],
        raw_output_contents=[data.tobytes()],
    )


# --- Metadata and configuration ------------------------------------------------------------------


def model_metadata_to_proto(info: ModelInfo, config: ServerConfig) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=info.name,
        versions=[info.version],
        platform=platform(config),
        inputs=[tensor(name=s.name, datatype=s.datatype, shape=[-1, 1]) for s in input_specs(info)],
        outputs=[tensor(name=IMAGE, datatype=_IMAGE.datatype, shape=[-1, *image_dims(info)])],
    )


def model_config_to_proto(info: ModelInfo, config: ServerConfig) -> mc.ModelConfig:
    """Triton's ModelConfig of a served model: its tensors, batch limit and queue settings.

    For a diffusion model a batch is the step scheduler's running set of image slots, which waits
    for no one: preferred sizes and queue delay do not apply there and are left out."""
    settings = config.settings_for(info.name)
    queue = mc.ModelQueuePolicy(max_queue_size=settings.max_queue_size)
    if settings.default_timeout_ms is not None:
        queue.default_timeout_microseconds = round(settings.default_timeout_ms * 1000)
    batching = mc.ModelDynamicBatching(
        priority_levels=settings.priority_levels,
        default_priority_level=settings.default_priority,
        default_queue_policy=queue,
    )
    parameters = {"kind": info.kind.value}
    if info.kind is ModelKind.DIFFUSION:
        parameters |= {
            "num_timesteps": str(info.num_timesteps),
            "default_steps": str(info.default_steps),
            "diffusion_batching": settings.diffusion_batching,
        }
    else:
        batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = round(settings.max_queue_delay_ms * 1000)
    return mc.ModelConfig(
        name=info.name,
        platform=platform(config),
        backend=SERVER_NAME,
        max_batch_size=info.max_images,
        input=[
            mc.ModelInput(name=s.name, data_type=s.config_type, dims=[1], optional=s.optional)
            for s in input_specs(info)
        ],
        output=[mc.ModelOutput(name=IMAGE, data_type=_IMAGE.config_type, dims=image_dims(info))],
        dynamic_batching=batching,
        parameters={k: mc.ModelParameter(string_value=v) for k, v in parameters.items()},
    )


# --- Statistics ----------------------------------------------------------------------------------


@dataclass
class InferStats:
    """Cumulative ModelInfer outcomes of one model (the success and fail parts of Triton's
    ModelStatistics; the rest comes from the scheduler's totals)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0  # arrival of the latest call, milliseconds since the epoch

    def started(self) -> int:
        self.last_inference_ms = time.time_ns() // 1_000_000
        return time.perf_counter_ns()

    def succeeded(self, started_ns: int) -> None:
        self.success_count += 1
        self.success_ns += time.perf_counter_ns() - started_ns

    def failed(self, started_ns: int) -> None:
        self.fail_count += 1
        self.fail_ns += time.perf_counter_ns() - started_ns

    def to_proto(self, info: ModelInfo, totals: Totals) -> pb.ModelStatistics:
        return pb.ModelStatistics(
            name=info.name,
            version=info.version,
            last_inference=self.last_inference_ms,
            inference_count=totals.inference_count,
            execution_count=totals.execution_count,
            inference_stats=pb.InferStatistics(
                success=pb.StatisticDuration(count=self.success_count, ns=self.success_ns),
                fail=pb.StatisticDuration(count=self.fail_count, ns=self.fail_ns),
                queue=pb.StatisticDuration(count=totals.queue_count, ns=totals.queue_ns),
                # perf_analyzer needs the three compute parts counted alike; genserve's input
                # and output conversions run inside the engine call, so their time is in infer.
                compute_input=pb.StatisticDuration(count=totals.compute_count, ns=0),
                compute_infer=pb.StatisticDuration(count=totals.compute_count, ns=totals.compute_ns),
                compute_output=pb.StatisticDuration(count=totals.compute_count, ns=0),
            ),
        )


# --- The servicer --------------------------------------------------------------------------------


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 on genserve's registry: the RPCs of the module docstring; every other RPC is the
    generated base class's UNIMPLEMENTED."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics):
        self._registry = registry
        self._config = config
        self._metrics = metrics
        self._stats: dict[str, InferStats] = {}

    def _infos(self) -> dict[str, ModelInfo]:
        return {info.name: info for info in self._registry.infos()}

    def _model(self, name: str, version: str) -> tuple[ModelInfo, ModelScheduler]:
        """The served model ``name`` at ``version`` ("" = the served one); NotFound or Unavailable."""
        scheduler = self._registry.scheduler(name)  # NotFound listing the served models; Unavailable while loading
        info = self._infos()[name]
        if version not in ("", info.version):
            raise NotFound(f"model {name} has no version {version!r}; it serves version {info.version!r} only")
        return info, scheduler

    def _stats_of(self, model: str) -> InferStats:
        return self._stats.setdefault(model, InferStats())

    async def ServerLive(self, request, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context: grpc.aio.ServicerContext):
        return pb.ServerReadyResponse(ready=self._registry.loaded)

    async def ModelReady(self, request, context: grpc.aio.ServicerContext):
        """Triton's answer: false, not an error, for a model that is not served (yet) or another version."""
        info = self._infos().get(request.name)
        ready = info is not None and self._registry.loaded and request.version in ("", info.version)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=importlib.metadata.version("genserve"), extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request, context: grpc.aio.ServicerContext):
        info, _ = self._model(request.name, request.version)
        return model_metadata_to_proto(info, self._config)

    async def ModelConfig(self, request, context: grpc.aio.ServicerContext):
        info, _ = self._model(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config_to_proto(info, self._config))

    async def RepositoryIndex(self, request, context: grpc.aio.ServicerContext):
        """Every served model is READY (genserve loads the whole repository before it serves)."""
        index = pb.RepositoryIndexResponse.ModelIndex
        infos = sorted(self._infos().values(), key=lambda i: i.name)
        return pb.RepositoryIndexResponse(models=[index(name=i.name, version=i.version, state=READY) for i in infos])

    async def ModelStatistics(self, request, context: grpc.aio.ServicerContext):
        """One model's statistics, or every model's when no name is given."""
        if request.name:
            infos = [self._model(request.name, request.version)[0]]
        else:
            infos = sorted(self._infos().values(), key=lambda i: i.name)
        return pb.ModelStatisticsResponse(
            model_stats=[self._stats_of(i.name).to_proto(i, self._metrics.for_model(i.name).totals) for i in infos]
        )

    async def ModelInfer(self, request, context: grpc.aio.ServicerContext):
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        info, scheduler = self._model(request.model_name, request.model_version)
        stats = self._stats_of(info.name)
        started = stats.started()
        try:
            call = infer_call_from_proto(request, info)
            requested_outputs(request, info.name)
            images = await _gather([scheduler.submit(r, deadline) for r in call.requests(info.name)])
        except BaseException:  # cancellations too: the call did not succeed
            stats.failed(started)
            raise
        stats.succeeded(started)
        return infer_response_to_proto(request, info, images)


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` on ``server`` (tritonclient's generated registration function)."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


async def _gather(submissions: list) -> np.ndarray:
    """Run the rows' submissions concurrently and stack their images in row order. On the first
    failure the other rows are cancelled, freeing their queue places and slots, and it is raised."""
    tasks = [asyncio.ensure_future(s) for s in submissions]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return np.concatenate(results)
