"""The KServe v2 tensor contract and its protobuf conversions, in one place.

This is the KServe counterpart of ``convert``: the only module that imports the protocol's
generated message code, NVIDIA's own ``tritonclient.grpc.service_pb2`` and ``model_config_pb2``
(nothing is vendored or generated here, see protos/README.md). The servicer (``kserve``) calls
these functions and sees domain requests, ``ModelInfo`` and NumPy arrays; a request outside the
contract raises the domain ``InvalidArgument`` here, naming the problem and what is allowed.

Tensor contract (``max_batch_size`` = the model's ``max_images``, batch dim first; one row = one
image, and each row is submitted as its own one-image request):

    samplers and diffusion models
    input  SEED        INT64  dims [1]          required; row r is made from seed SEED[r]
    input  STEPS       INT32  dims [1]          diffusion only, optional; the same on every row;
                                                absent = the model's default steps
    input  LABEL       INT32  dims [1]          class-conditional models only, optional; absent =
                                                a class per image drawn from its seed
    input  GUIDANCE    FP32   dims [1]          guided class-conditional models only, optional; the
                                                classifier-free guidance scale of row r; absent =
                                                the model's default
    input  TEMPERATURE FP32   dims [1]          autoregressive models and flows only, optional;
                                                the sampling temperature of row r
    input  TRUNCATION  FP32   dims [1]          style-based models only, optional: psi of row r
    input  MIX_SEED    INT64  dims [1]          style-based models only, optional: style mixing
    input  MIX_LAYER   INT32  dims [1]          style-based models only, optional (with MIX_SEED)
    models with a likelihood (flows): SEED is optional, and instead of it a call may send
    input  SOURCE      UINT8  dims [H, W, C]    an image per row, whose likelihood is returned as
    output BITS_PER_DIM FP32  dims [1]          -log2 p(image) / (H W C), the default output then
    translators
    input  SOURCE      UINT8  dims [h, w, c]    required; the model's input image (input_shape)
    every model
    output IMAGE       UINT8  dims [H, W, C]    returned when no output is named, or when named
    output IMAGE_FP32  FP32   dims [H, W, C]    only when named: IMAGE / 255, for float pipelines

Row r of IMAGE is byte for byte image 0 of genserve's own ``Generate(model, num_images=1,
seed=SEED[r], steps=STEPS, label=LABEL[r], guidance=GUIDANCE[r], ...)``, or of ``Translate(model,
[SOURCE[r]])``; row r of BITS_PER_DIM is ``LogLikelihood(model, [SOURCE[r]])``'s. The rows
are submitted concurrently, so the dynamic batcher (one-pass models) or the step scheduler
(diffusion) batches them with each other and with every other client's work; each row counts
against the model's ``max_queue_size``. The call's gRPC deadline bounds every row, and the
request parameter ``timeout`` (microseconds, as ``tritonclient``'s ``timeout=`` sends it) adds a
queue timeout; other request parameters are ignored. Unlike Triton, a call naming no output gets
IMAGE only (not every output): the float copy is four times the bytes and few clients want it.

Inputs come as little-endian ``raw_input_contents`` (what Triton's clients send) or in the typed
``contents`` fields (``int64_contents`` for SEED, ``int_contents`` for STEPS and LABEL,
``fp32_contents`` for GUIDANCE, ``uint_contents`` for SOURCE); outputs are returned in
``raw_output_contents``, which is what Triton's clients read. Shared-memory tensors are not
supported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# NVIDIA's generated code for the protocol (importing it also imports the tritonclient.grpc
# client package: grpc, numpy and tritonclient.utils, no torch). It registers in protobuf's
# default descriptor pool, so server reflection describes the service like genserve's own.
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from genserve.serving.config import ServerConfig
from genserve.serving.domain import GenerateRequest, LikelihoodRequest, ModelInfo, Request, TranslateRequest
from genserve.serving.errors import InvalidArgument
from genserve.serving.kserve_stats import InferStats
from genserve.serving.metrics import Totals
from genserve.signature import ModelKind

SERVER_NAME = "genserve"
# Triton protocol extensions genserve implements in full: the ModelConfig and ModelStatistics RPCs.
EXTENSIONS = ("model_configuration", "statistics")
SEED, STEPS, LABEL, GUIDANCE, SOURCE = "SEED", "STEPS", "LABEL", "GUIDANCE", "SOURCE"
TEMPERATURE, TRUNCATION, MIX_SEED, MIX_LAYER = "TEMPERATURE", "TRUNCATION", "MIX_SEED", "MIX_LAYER"
IMAGE, IMAGE_FP32, BITS_PER_DIM = "IMAGE", "IMAGE_FP32", "BITS_PER_DIM"
READY = "READY"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract: KServe datatype, Triton config type, little-endian NumPy dtype,
    dims of one row."""

    name: str
    datatype: str
    config_type: int
    dtype: np.dtype
    contents_field: str = ""  # where typed contents carry it (inputs only)
    optional: bool = False
    dims: tuple[int, ...] = (1,)

    @property
    def row_size(self) -> int:
        return math.prod(self.dims)


_SEED = TensorSpec(SEED, "INT64", mc.TYPE_INT64, np.dtype("<i8"), "int64_contents")
_STEPS = TensorSpec(STEPS, "INT32", mc.TYPE_INT32, np.dtype("<i4"), "int_contents", optional=True)
_LABEL = TensorSpec(LABEL, "INT32", mc.TYPE_INT32, np.dtype("<i4"), "int_contents", optional=True)
_GUIDANCE = TensorSpec(GUIDANCE, "FP32", mc.TYPE_FP32, np.dtype("<f4"), "fp32_contents", optional=True)
_TEMPERATURE = TensorSpec(TEMPERATURE, "FP32", mc.TYPE_FP32, np.dtype("<f4"), "fp32_contents", optional=True)
_STYLE = (
    TensorSpec(TRUNCATION, "FP32", mc.TYPE_FP32, np.dtype("<f4"), "fp32_contents", optional=True),
    TensorSpec(MIX_SEED, "INT64", mc.TYPE_INT64, np.dtype("<i8"), "int64_contents", optional=True),
    TensorSpec(MIX_LAYER, "INT32", mc.TYPE_INT32, np.dtype("<i4"), "int_contents", optional=True),
)
_BITS_PER_DIM = TensorSpec(BITS_PER_DIM, "FP32", mc.TYPE_FP32, np.dtype("<f4"))


def input_specs(info: ModelInfo) -> tuple[TensorSpec, ...]:
    options = (
        info.default_guidance is not None,
        info.default_temperature is not None,
        info.style_layers is not None,
        info.likelihood,
    )
    return _input_specs(info.kind, info.num_classes, info.input_shape or info.image_shape, *options)


def output_specs(info: ModelInfo) -> tuple[TensorSpec, ...]:
    """IMAGE, then IMAGE_FP32: per-row dims [H, W, C] (genserve images are HWC; image_shape is CHW);
    then BITS_PER_DIM for a model with a likelihood."""
    return _output_specs(info.image_shape, info.likelihood)


# Cached: every ModelInfer needs them, and building them was a tenth of a small call's Python time.
@functools.cache
def _input_specs(
    kind: ModelKind,
    num_classes: int | None,
    input_shape: tuple[int, int, int],
    guidance: bool = False,
    temperature: bool = False,
    style: bool = False,
    likelihood: bool = False,
) -> tuple[TensorSpec, ...]:
    c, h, w = input_shape
    source = TensorSpec(
        SOURCE, "UINT8", mc.TYPE_UINT8, np.dtype(np.uint8), "uint_contents", optional=likelihood, dims=(h, w, c)
    )
    if kind is ModelKind.TRANSLATOR:
        return (source,)
    seed = dataclasses.replace(_SEED, optional=True) if likelihood else _SEED  # SEED or SOURCE
    specs = (seed, _STEPS) if kind is ModelKind.DIFFUSION else (seed,)
    if num_classes is not None:
        specs += (_LABEL,)
    if guidance:
        specs += (_GUIDANCE,)
    if temperature:
        specs += (_TEMPERATURE,)
    if style:
        specs += _STYLE
    if likelihood:
        specs += (source,)
    return specs


@functools.cache
def _output_specs(image_shape: tuple[int, int, int], likelihood: bool = False) -> tuple[TensorSpec, ...]:
    c, h, w = image_shape
    return (
        TensorSpec(IMAGE, "UINT8", mc.TYPE_UINT8, np.dtype(np.uint8), dims=(h, w, c)),
        TensorSpec(IMAGE_FP32, "FP32", mc.TYPE_FP32, np.dtype("<f4"), dims=(h, w, c)),
    ) + ((_BITS_PER_DIM,) if likelihood else ())


def platform(config: ServerConfig) -> str:
    return f"genserve_{config.backend.value}"


# --- ModelInfer: request -> domain ---------------------------------------------------------------


@dataclass(frozen=True)
class InferCall:
    """A decoded ModelInferRequest: one domain request per row, and the outputs to return."""

    rows: tuple[Request, ...]
    outputs: tuple[TensorSpec, ...]


def _describe(specs: Iterable[TensorSpec]) -> str:
    return ", ".join(f"{s.name} ({s.datatype} {[-1, *s.dims]}{', optional' if s.optional else ''})" for s in specs)


def _rows(spec: TensorSpec, model: str, shape: list[int], max_batch: int) -> int:
    """Rows of an input; InvalidArgument unless ``shape`` is [B, *dims] with 1 <= B <= max_batch."""
    if shape[1:] != list(spec.dims):
        raise InvalidArgument(
            f"input {spec.name} of model {model} must have shape [batch, {', '.join(map(str, spec.dims))}] "
            f"(dims {list(spec.dims)} with a batch dimension), got {shape}"
        )
    if not 1 <= shape[0] <= max_batch:
        raise InvalidArgument(
            f"input {spec.name} of model {model} has batch size {shape[0]}; it must be in [1, {max_batch}] "
            f"(max_batch_size of {model})"
        )
    return shape[0]


def _values(
    tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec, raw: bytes | None, rows: int
) -> np.ndarray:
    """The ``rows`` rows of one input, (rows, *dims), from its raw bytes or its typed contents."""
    count = rows * spec.row_size
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgument(f"input {spec.name} has both raw_input_contents and contents; send one of them")
        expected = count * spec.dtype.itemsize
        if len(raw) != expected:
            raise InvalidArgument(
                f"input {spec.name} ({spec.datatype} {list(tensor.shape)}) needs {expected} bytes of "
                f"raw_input_contents, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=spec.dtype).reshape(rows, *spec.dims)
    values = getattr(tensor.contents, spec.contents_field)
    if len(values) != count:
        raise InvalidArgument(
            f"input {spec.name} ({spec.datatype} {list(tensor.shape)}) needs {count} values in "
            f"contents.{spec.contents_field}, got {len(values)} (or send raw_input_contents)"
        )
    info = np.iinfo(spec.dtype) if spec.dtype.kind in "iu" else None
    array = np.asarray(values)
    if info is not None and array.size and (array.min() < info.min or array.max() > info.max):
        raise InvalidArgument(f"input {spec.name} has values outside the range of {spec.datatype}")
    return array.astype(spec.dtype).reshape(rows, *spec.dims)


def _inputs(msg: pb.ModelInferRequest, info: ModelInfo) -> dict[str, np.ndarray]:
    """Every input of the request, checked against the model's contract: name -> (rows, *dims)."""
    model, specs = info.name, {s.name: s for s in input_specs(info)}
    raws = list(msg.raw_input_contents)
    if raws and len(raws) != len(msg.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raws)} entries for {len(msg.inputs)} inputs; send one per input, in order"
        )
    values: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"model {model} has no input named {tensor.name!r}; its inputs: {_describe(specs.values())}"
            )
        if tensor.name in values:
            raise InvalidArgument(f"input {tensor.name} is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"input {spec.name} of model {model} must be {spec.datatype}, got {tensor.datatype or '(none)'}"
            )
        if "shared_memory_region" in tensor.parameters:
            raise InvalidArgument(f"input {spec.name}: shared memory is not supported by genserve; send the data")
        rows = _rows(spec, model, list(tensor.shape), info.max_images)
        if values and rows != len(next(iter(values.values()))):
            first = next(iter(values))
            raise InvalidArgument(
                f"input {spec.name} has {rows} rows but {first} has {len(values[first])}; give every input the same"
            )
        values[spec.name] = _values(tensor, spec, raws[i] if raws else None, rows)
    for spec in specs.values():
        if not spec.optional and spec.name not in values:
            raise InvalidArgument(f"model {model} needs input {spec.name}; its inputs: {_describe(specs.values())}")
    return values


def infer_call_from_proto(msg: pb.ModelInferRequest, info: ModelInfo) -> InferCall:
    """Check a ModelInferRequest against the model's tensor contract and decode it into one domain
    request per row; InvalidArgument naming the problem and what is allowed."""
    values = _inputs(msg, info)
    timeout = _timeout(msg)
    model = info.name
    if info.kind is ModelKind.TRANSLATOR:
        outputs = requested_outputs(msg, info)
        return InferCall(tuple(TranslateRequest(model, (image,), timeout=timeout) for image in values[SOURCE]), outputs)
    if info.likelihood:
        if (SEED in values) == (SOURCE in values):
            raise InvalidArgument(
                f"model {model} takes either {SEED} (to generate IMAGE) or {SOURCE} (images whose "
                f"{BITS_PER_DIM} to compute), exactly one of them"
            )
        if SOURCE in values:
            outputs = requested_outputs(msg, info, default=BITS_PER_DIM, allowed=(BITS_PER_DIM,))
            rows = tuple(LikelihoodRequest(model, (image,), timeout=timeout) for image in values[SOURCE])
            return InferCall(rows, outputs)
    outputs = requested_outputs(msg, info, allowed=(IMAGE, IMAGE_FP32))
    steps = None
    if STEPS in values:
        column = values[STEPS][:, 0]
        if np.any(column != column[0]):
            raise InvalidArgument(f"input {STEPS} must be the same on every row, got {column.tolist()}")
        steps = int(column[0])
    unset = [None] * len(values[SEED])

    def column(name: str) -> list:
        return values[name][:, 0].tolist() if name in values else unset

    fields = {
        "label": column(LABEL),
        "guidance": column(GUIDANCE),
        "temperature": column(TEMPERATURE),
        "truncation": column(TRUNCATION),
        "mix_seed": column(MIX_SEED),
        "mix_layer": column(MIX_LAYER),
    }
    rows = tuple(
        GenerateRequest(model, 1, seed=int(seed), steps=steps, timeout=timeout, **{k: v[r] for k, v in fields.items()})
        for r, seed in enumerate(values[SEED][:, 0].tolist())
    )
    return InferCall(rows, outputs)


def _timeout(msg: pb.ModelInferRequest) -> float | None:
    """The request parameter ``timeout`` (int64 microseconds, Triton's), in seconds; 0 or absent = none."""
    if "timeout" not in msg.parameters:
        return None
    param = msg.parameters["timeout"]
    if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 0:
        raise InvalidArgument("parameter timeout must be an int64 number of microseconds >= 0 (0 = none)")
    return param.int64_param / 1e6 or None


def requested_outputs(
    msg: pb.ModelInferRequest, info: ModelInfo, default: str = IMAGE, allowed: tuple[str, ...] | None = None
) -> tuple[TensorSpec, ...]:
    """The outputs to return, in the order asked (``default`` when none is named); InvalidArgument
    for an output the model does not have, or one this call's inputs do not make (``allowed``)."""
    specs = {s.name: s for s in output_specs(info)}
    if not msg.outputs:
        return (specs[default],)
    chosen = []
    for output in msg.outputs:
        if output.name not in specs:
            raise InvalidArgument(
                f"model {info.name} has no output named {output.name!r}; its outputs: {_describe(specs.values())}"
            )
        if allowed is not None and output.name not in allowed:
            raise InvalidArgument(
                f"output {output.name} of model {info.name} is not made from these inputs; "
                f"they make {', '.join(allowed)}"
            )
        if "shared_memory_region" in output.parameters:
            raise InvalidArgument(f"output {output.name}: shared memory is not supported by genserve")
        chosen.append(specs[output.name])
    return tuple(chosen)


# --- ModelInfer: domain -> response --------------------------------------------------------------


def infer_response_to_proto(
    msg: pb.ModelInferRequest, info: ModelInfo, images: np.ndarray, outputs: tuple[TensorSpec, ...]
) -> pb.ModelInferResponse:
    """uint8 images (B, H, W, C) (or bits per dimension (B,) for BITS_PER_DIM) -> ModelInferResponse
    with the asked outputs in raw_output_contents."""
    tensor = pb.ModelInferResponse.InferOutputTensor
    if outputs and outputs[0].name == BITS_PER_DIM:
        bits = np.ascontiguousarray(images, dtype="<f4").reshape(-1, 1)
        return pb.ModelInferResponse(
            model_name=info.name,
            model_version=info.version,
            id=msg.id,
            outputs=[tensor(name=BITS_PER_DIM, datatype="FP32", shape=bits.shape)],
            raw_output_contents=[bits.tobytes()],
        )
    data = np.ascontiguousarray(images, dtype=np.uint8)
    return pb.ModelInferResponse(
        model_name=info.name,
        model_version=info.version,
        id=msg.id,
        outputs=[tensor(name=s.name, datatype=s.datatype, shape=data.shape) for s in outputs],
        raw_output_contents=[_raw(data, s.name) for s in outputs],
    )


def _raw(images: np.ndarray, output: str) -> bytes:
    return images.tobytes() if output == IMAGE else (images / np.float32(255.0)).astype("<f4").tobytes()


def stream_infer_response(response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(infer_response=response)


def stream_error_response(msg: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A stream's answer to a failed request: the error, and the request's id and model to match it by."""
    failed = pb.ModelInferResponse(id=msg.id, model_name=msg.model_name)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)


# --- Health, metadata and configuration ----------------------------------------------------------


def server_live_response() -> pb.ServerLiveResponse:
    return pb.ServerLiveResponse(live=True)


def server_ready_response(ready: bool) -> pb.ServerReadyResponse:
    return pb.ServerReadyResponse(ready=ready)


def model_ready_response(ready: bool) -> pb.ModelReadyResponse:
    return pb.ModelReadyResponse(ready=ready)


def server_metadata_response(version: str) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=version, extensions=EXTENSIONS)


def repository_index_response(infos: Iterable[ModelInfo]) -> pb.RepositoryIndexResponse:
    """Every model of ``infos`` READY, in the order given."""
    index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(models=[index(name=i.name, version=i.version, state=READY) for i in infos])


def model_metadata_to_proto(info: ModelInfo, config: ServerConfig) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=info.name,
        versions=[info.version],
        platform=platform(config),
        inputs=[tensor(name=s.name, datatype=s.datatype, shape=[-1, *s.dims]) for s in input_specs(info)],
        outputs=[tensor(name=s.name, datatype=s.datatype, shape=[-1, *s.dims]) for s in output_specs(info)],
    )


def model_config_to_proto(info: ModelInfo, config: ServerConfig) -> mc.ModelConfig:
    """Triton's ModelConfig of a served model: its tensors, batch limit and queue settings.

    For an iterative model a batch is the step scheduler's running set of image slots, which waits
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
    elif info.kind is ModelKind.AUTOREGRESSIVE:
        parameters |= {"num_steps": str(info.num_steps), "diffusion_batching": settings.diffusion_batching}
    else:
        batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = round(settings.max_queue_delay_ms * 1000)
    return mc.ModelConfig(
        name=info.name,
        platform=platform(config),
        backend=SERVER_NAME,
        max_batch_size=info.max_images,
        input=[
            mc.ModelInput(name=s.name, data_type=s.config_type, dims=s.dims, optional=s.optional)
            for s in input_specs(info)
        ],
        output=[mc.ModelOutput(name=s.name, data_type=s.config_type, dims=s.dims) for s in output_specs(info)],
        dynamic_batching=batching,
        parameters={k: mc.ModelParameter(string_value=v) for k, v in parameters.items()},
    )


def model_config_response(info: ModelInfo, config: ServerConfig) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=model_config_to_proto(info, config))


# --- Statistics ----------------------------------------------------------------------------------


def model_statistics_to_proto(info: ModelInfo, stats: InferStats, totals: Totals) -> pb.ModelStatistics:
    """One model's ModelStatistics: this API's call outcomes (``stats``) and the scheduler's
    ``totals`` (see ``kserve_stats`` for what each field counts)."""
    return pb.ModelStatistics(
        name=info.name,
        version=info.version,
        last_inference=stats.last_inference_ms,
        inference_count=totals.inference_count,
        execution_count=totals.execution_count,
        inference_stats=pb.InferStatistics(
            success=pb.StatisticDuration(count=stats.success_count, ns=stats.success_ns),
            fail=pb.StatisticDuration(count=stats.fail_count, ns=stats.fail_ns),
            queue=pb.StatisticDuration(count=totals.queue_count, ns=totals.queue_ns),
            # perf_analyzer needs the three compute parts counted alike; genserve's input
            # and output conversions run inside the engine call, so their time is in infer.
            compute_input=pb.StatisticDuration(count=totals.compute_count, ns=0),
            compute_infer=pb.StatisticDuration(count=totals.compute_count, ns=totals.compute_ns),
            compute_output=pb.StatisticDuration(count=totals.compute_count, ns=0),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=pb.StatisticDuration(count=count, ns=0),
                compute_infer=pb.StatisticDuration(count=count, ns=ns),
                compute_output=pb.StatisticDuration(count=count, ns=0),
            )
            for size, (count, ns) in sorted(totals.batches.items())
        ],
    )


def model_statistics_response(model_stats: Iterable[pb.ModelStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(model_stats=model_stats)
