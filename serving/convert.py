"""Protobuf <-> domain conversions, in one place.

This is the only module that imports generated message code (``*_pb2``); servicers, the server
and the client call these functions and see domain objects and NumPy arrays. Generated service
code (``*_pb2_grpc``: stubs and servicer registration) is used by ``server`` and ``client`` only.

Request checks that only the wire format can get wrong (an enum number the proto does not define,
a missing model name, a tensor whose bytes do not match its shape, an undecodable PNG) raise the
domain ``InvalidArgument`` here; limits that depend on the model (num_images, steps, eta, label,
image sizes) are the runner's ``validate``.
"""

from __future__ import annotations

import enum
import io
import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
from grpc_health.v1 import health_pb2
from PIL import Image as PILImage

from genserve import images
from genserve.schedule import Sampler
from genserve.serving.domain import GenerateRequest, LikelihoodRequest, ModelInfo, TranslateRequest
from genserve.serving.errors import InvalidArgument
from genserve.serving.pb import genserve_pb2 as pb
from genserve.signature import ModelKind

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["GenerationService"]
SERVICE_NAME: str = SERVICE_DESCRIPTOR.full_name  # "genserve.v1.GenerationService"


class ImageEncoding(enum.Enum):
    """Which representations of each image a GenerateResponse carries (a transport choice)."""

    PNG_AND_RAW = "png_and_raw"
    PNG = "png"
    RAW = "raw"

    @property
    def png(self) -> bool:
        return self is not ImageEncoding.RAW

    @property
    def raw(self) -> bool:
        return self is not ImageEncoding.PNG


_KIND = {
    ModelKind.SAMPLER: pb.MODEL_KIND_SAMPLER,
    ModelKind.TRANSLATOR: pb.MODEL_KIND_TRANSLATOR,
    ModelKind.DIFFUSION: pb.MODEL_KIND_DIFFUSION,
    ModelKind.AUTOREGRESSIVE: pb.MODEL_KIND_AUTOREGRESSIVE,
}
_SAMPLER = {Sampler.DDPM: pb.SAMPLER_DDPM, Sampler.DDIM: pb.SAMPLER_DDIM}
_ENCODING = {
    ImageEncoding.PNG_AND_RAW: pb.IMAGE_ENCODING_PNG_AND_RAW,
    ImageEncoding.PNG: pb.IMAGE_ENCODING_PNG,
    ImageEncoding.RAW: pb.IMAGE_ENCODING_RAW,
}
_DTYPE = {np.dtype(np.uint8): pb.DATA_TYPE_UINT8, np.dtype("<f4"): pb.DATA_TYPE_FLOAT32}


def _invert(table: dict) -> dict:
    return {v: k for k, v in table.items()}


_KIND_FROM_PB = _invert(_KIND)
_SAMPLER_FROM_PB = _invert(_SAMPLER) | {pb.SAMPLER_UNSPECIFIED: None}
_ENCODING_FROM_PB = _invert(_ENCODING) | {pb.IMAGE_ENCODING_UNSPECIFIED: ImageEncoding.PNG_AND_RAW}
_DTYPE_FROM_PB = _invert(_DTYPE)


def _enum_from_pb(table: dict, value: int, field: str, enum_type) -> object:
    """Look up a proto enum number; proto3 enums are open, so any int32 can arrive on the wire."""
    try:
        return table[value]
    except KeyError:
        allowed = ", ".join(enum_type.Name(v) for v in sorted(table))
        raise InvalidArgument(f"{field} must be one of {allowed}; got {value}") from None


# --- GenerateRequest -------------------------------------------------------------------------


def generate_request_from_proto(msg: pb.GenerateRequest) -> tuple[GenerateRequest, ImageEncoding]:
    """Wire request -> domain request and the encoding the response should use."""
    if not msg.model:
        raise InvalidArgument("model must be set to a name from ListModels")
    request = GenerateRequest(
        model=msg.model,
        num_images=msg.num_images,
        seed=msg.seed,
        steps=msg.steps if msg.HasField("steps") else None,
        sampler=_enum_from_pb(_SAMPLER_FROM_PB, msg.sampler, "sampler", pb.Sampler),
        eta=float(msg.eta) if msg.HasField("eta") else None,
        priority=msg.priority,
        timeout=_timeout_from_proto(msg),
        label=msg.label if msg.HasField("label") else None,
        interpolate_to_seed=msg.interpolate_to_seed if msg.HasField("interpolate_to_seed") else None,
        guidance=float(msg.guidance) if msg.HasField("guidance") else None,
        first_index=msg.first_index,
        temperature=float(msg.temperature) if msg.HasField("temperature") else None,
        truncation=float(msg.truncation) if msg.HasField("truncation") else None,
        mix_seed=msg.mix_seed if msg.HasField("mix_seed") else None,
        mix_layer=msg.mix_layer if msg.HasField("mix_layer") else None,
    )
    encoding = _enum_from_pb(_ENCODING_FROM_PB, msg.encoding, "encoding", pb.ImageEncoding)
    return request, encoding


def _timeout_from_proto(msg: pb.GenerateRequest | pb.TranslateRequest) -> float | None:
    """``timeout_ms`` in seconds (None when unset); 0 is refused rather than read as "no time at all"."""
    if not msg.HasField("timeout_ms"):
        return None
    if msg.timeout_ms == 0:
        raise InvalidArgument("timeout_ms must be > 0 when set (unset it for no timeout)")
    return msg.timeout_ms / 1000.0


def generate_stream_request_from_proto(msg: pb.GenerateStreamRequest) -> tuple[GenerateRequest, ImageEncoding, int]:
    """Wire stream request -> domain request, response encoding, preview period in steps (0 = none)."""
    request, encoding = generate_request_from_proto(msg.request)
    return request, encoding, msg.preview_every


def generate_stream_request_to_proto(
    request: GenerateRequest, encoding: ImageEncoding = ImageEncoding.PNG_AND_RAW, preview_every: int = 0
) -> pb.GenerateStreamRequest:
    return pb.GenerateStreamRequest(request=generate_request_to_proto(request, encoding), preview_every=preview_every)


def progress_to_proto(
    step: int, total: int, previews: np.ndarray | None = None, result: pb.GenerateResponse | None = None
) -> pb.GenerateProgress:
    """One stream message; ``previews`` uint8 (N, h, w, C), ``result`` on the last one."""
    msg = pb.GenerateProgress(step=step, total_steps=total)
    if previews is not None:
        msg.previews.extend(tensor_to_proto(p) for p in previews)
    if result is not None:
        msg.result.CopyFrom(result)
    return msg


def progress_from_proto(msg: pb.GenerateProgress) -> tuple[int, int, list[np.ndarray], pb.GenerateResponse | None]:
    """(step, total steps, previews, final response or None)."""
    previews = [tensor_from_proto(t) for t in msg.previews]
    return msg.step, msg.total_steps, previews, msg.result if msg.HasField("result") else None


def generate_request_to_proto(
    request: GenerateRequest, encoding: ImageEncoding = ImageEncoding.PNG_AND_RAW
) -> pb.GenerateRequest:
    msg = pb.GenerateRequest(
        model=request.model,
        num_images=request.num_images,
        seed=request.seed,
        sampler=pb.SAMPLER_UNSPECIFIED if request.sampler is None else _SAMPLER[request.sampler],
        encoding=_ENCODING[encoding],
        priority=request.priority,
        first_index=request.first_index,
    )
    if request.steps is not None:
        msg.steps = request.steps
    if request.timeout is not None:
        msg.timeout_ms = max(1, round(request.timeout * 1000))
    if request.eta is not None:
        msg.eta = request.eta
    if request.label is not None:
        msg.label = request.label
    if request.interpolate_to_seed is not None:
        msg.interpolate_to_seed = request.interpolate_to_seed
    if request.guidance is not None:
        msg.guidance = request.guidance
    for field in ("temperature", "truncation", "mix_seed", "mix_layer"):
        if getattr(request, field) is not None:
            setattr(msg, field, getattr(request, field))
    return msg


# --- TranslateRequest ------------------------------------------------------------------------

MAX_PNG_PIXELS = 4096 * 4096  # larger PNGs are refused before their pixels are decoded
# PNG modes a translator accepts, and the mode each is read as: palette and 1-bit images are
# expanded, so that every value is a grey or colour level.
_PNG_MODES = {"1": "L", "L": "L", "LA": "LA", "P": "RGB", "RGB": "RGB", "RGBA": "RGBA"}


def translate_request_from_proto(msg: pb.TranslateRequest) -> tuple[TranslateRequest, ImageEncoding]:
    """Wire request -> domain request (images decoded to uint8 (H, W, C)) and the response encoding."""
    request = TranslateRequest(msg.model, _input_images(msg), priority=msg.priority, timeout=_timeout_from_proto(msg))
    return request, _enum_from_pb(_ENCODING_FROM_PB, msg.encoding, "encoding", pb.ImageEncoding)


def _input_images(msg: pb.TranslateRequest | pb.LogLikelihoodRequest) -> tuple[np.ndarray, ...]:
    """The model name is set, and the images of a request carrying them as PNGs or one raw tensor."""
    if not msg.model:
        raise InvalidArgument("model must be set to a name from ListModels")
    if msg.pngs and msg.HasField("raw"):
        raise InvalidArgument("set either pngs or raw, not both")
    if msg.pngs:
        return tuple(_png_pixels(data, i) for i, data in enumerate(msg.pngs))
    if msg.HasField("raw"):
        return _raw_images(tensor_from_proto(msg.raw))
    raise InvalidArgument("no images: set pngs (PNG files) or raw (a uint8 tensor (N, H, W) or (N, H, W, C))")


def likelihood_request_from_proto(msg: pb.LogLikelihoodRequest) -> LikelihoodRequest:
    return LikelihoodRequest(msg.model, _input_images(msg), priority=msg.priority, timeout=_timeout_from_proto(msg))


def likelihood_request_to_proto(
    model: str, raw: np.ndarray, priority: int = 0, timeout: float | None = None
) -> pb.LogLikelihoodRequest:
    """uint8 images (N, H, W) or (N, H, W, C) as one raw tensor."""
    msg = pb.LogLikelihoodRequest(model=model, priority=priority)
    msg.raw.CopyFrom(tensor_to_proto(raw))
    if timeout is not None:
        msg.timeout_ms = max(1, round(timeout * 1000))
    return msg


def likelihood_response_to_proto(model: str, bits_per_dim: np.ndarray) -> pb.LogLikelihoodResponse:
    return pb.LogLikelihoodResponse(model=model, bits_per_dim=np.asarray(bits_per_dim, np.float32).tolist())


def bits_per_dim_from_response(msg: pb.LogLikelihoodResponse) -> np.ndarray:
    return np.asarray(msg.bits_per_dim, dtype=np.float32)


def translate_request_to_proto(
    model: str,
    raw: np.ndarray | None = None,
    pngs: Sequence[bytes] = (),
    encoding: ImageEncoding = ImageEncoding.PNG_AND_RAW,
    priority: int = 0,
    timeout: float | None = None,
) -> pb.TranslateRequest:
    """Images as one uint8 tensor ``raw`` (N, H, W) or (N, H, W, C), or as PNG files ``pngs``."""
    msg = pb.TranslateRequest(model=model, pngs=pngs, encoding=_ENCODING[encoding], priority=priority)
    if raw is not None:
        msg.raw.CopyFrom(tensor_to_proto(raw))
    if timeout is not None:
        msg.timeout_ms = max(1, round(timeout * 1000))
    return msg


def _png_pixels(data: bytes, index: int) -> np.ndarray:
    """PNG file bytes -> uint8 (H, W, C); InvalidArgument naming the image's index if it is not one."""
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                raise InvalidArgument(f"image {index} is a {img.format} file, not a PNG")
            width, height = img.size
            if width * height > MAX_PNG_PIXELS:
                raise InvalidArgument(f"image {index} is {width}x{height}, larger than any model takes")
            if img.mode not in _PNG_MODES:
                raise InvalidArgument(f"image {index} is a PNG of mode {img.mode}; send 8-bit grey or RGB")
            pixels = np.asarray(img.convert(_PNG_MODES[img.mode]))
    except InvalidArgument:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error... on corrupt files
        raise InvalidArgument(f"image {index} is not a decodable PNG ({type(exc).__name__}: {exc})") from exc
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


def _raw_images(array: np.ndarray) -> tuple[np.ndarray, ...]:
    """uint8 (N, H, W) or (N, H, W, C) -> N images (H, W, C)."""
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise InvalidArgument(
            f"raw must be a uint8 tensor (N, H, W) or (N, H, W, C), got {array.dtype} {list(array.shape)}"
        )
    return tuple(array if array.ndim == 4 else array[..., None])


# --- Tensors and images ----------------------------------------------------------------------

MAX_TENSOR_DIMS = 32  # NumPy's limit is 32 or 64 (by version); images need 4


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    """uint8 or float32 array -> Tensor (little-endian, C order)."""
    dtype = array.dtype.newbyteorder("<")
    if dtype not in _DTYPE:
        raise ValueError(f"tensors carry uint8 or float32, not {array.dtype}")
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return pb.Tensor(dtype=_DTYPE[dtype], shape=array.shape, data=data)


def tensor_from_proto(msg: pb.Tensor) -> np.ndarray:
    """Tensor -> a (read-only) array of its dtype and shape; InvalidArgument if they disagree with the bytes."""
    dtype = _enum_from_pb(_DTYPE_FROM_PB, msg.dtype, "tensor dtype", pb.DataType)
    shape = tuple(msg.shape)
    if len(shape) > MAX_TENSOR_DIMS:
        raise InvalidArgument(f"tensor shape must have at most {MAX_TENSOR_DIMS} dimensions, got {len(shape)}")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"tensor shape must not have negative dimensions, got {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a product past int64 must not wrap to 0
    if len(msg.data) != expected:
        raise InvalidArgument(f"tensor of {dtype} {list(shape)} needs {expected} bytes, got {len(msg.data)}")
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > np.iinfo(np.intp).max:  # empty, but NumPy cannot shape it
        raise InvalidArgument(f"tensor shape {list(shape)} is too large")
    return np.frombuffer(msg.data, dtype=dtype).reshape(shape)


def image_to_proto(image: np.ndarray, encoding: ImageEncoding) -> pb.Image:
    """uint8 (H, W, C) -> Image with PNG bytes and/or the raw tensor."""
    msg = pb.Image()
    if encoding.png:
        msg.png = images.encode_png(image)
    if encoding.raw:
        msg.raw.CopyFrom(tensor_to_proto(image))
    return msg


def generate_response_to_proto(model: str, batch: np.ndarray, encoding: ImageEncoding) -> pb.GenerateResponse:
    """uint8 images (N, H, W, C) -> GenerateResponse."""
    return pb.GenerateResponse(model=model, images=[image_to_proto(image, encoding) for image in batch])


def translate_response_to_proto(model: str, batch: np.ndarray, encoding: ImageEncoding) -> pb.TranslateResponse:
    """uint8 images (N, H, W, C) -> TranslateResponse."""
    return pb.TranslateResponse(model=model, images=[image_to_proto(image, encoding) for image in batch])


def images_from_response(msg: pb.GenerateResponse | pb.TranslateResponse) -> np.ndarray:
    """The raw tensors of a GenerateResponse or TranslateResponse -> uint8 (N, H, W, C)."""
    arrays = []
    for i, image in enumerate(msg.images):
        if not image.HasField("raw"):
            raise ValueError(f"image {i} of the response has no raw tensor (was it requested as PNG only?)")
        arrays.append(tensor_from_proto(image.raw))
    if not arrays:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8)
    return np.stack(arrays)


def pngs_from_response(msg: pb.GenerateResponse | pb.TranslateResponse) -> list[bytes]:
    return [image.png for image in msg.images]


def image_count(msg: pb.GenerateResponse | pb.TranslateResponse) -> int:
    return len(msg.images)


# --- Models ----------------------------------------------------------------------------------


def model_info_to_proto(info: ModelInfo) -> pb.ModelInfo:
    msg = pb.ModelInfo(
        name=info.name,
        kind=_KIND[info.kind],
        version=info.version,
        image_shape=_image_shape_to_proto(info.image_shape),
        max_images_per_request=info.max_images,
        metrics={k: float(v) for k, v in info.metrics.items() if _is_number(v)},
        metrics_json=json.dumps(info.metrics, sort_keys=True),
        description=info.description,
        dataset=info.dataset,
        num_classes=info.num_classes or 0,
        latent_dim=info.latent_dim or 0,
        input_description=info.input_description,
        default_temperature=info.default_temperature,
        default_guidance=info.default_guidance,
        style_layers=info.style_layers or 0,
        log_likelihood=info.likelihood,
        num_steps=info.num_steps or 0,
        request_fields=info.request_fields,
    )
    if info.input_shape is not None:
        msg.input_shape.CopyFrom(_image_shape_to_proto(info.input_shape))
    if info.kind is ModelKind.DIFFUSION:
        msg.diffusion.CopyFrom(
            pb.DiffusionInfo(
                num_timesteps=info.num_timesteps or 0,
                default_steps=info.default_steps or 0,
                default_sampler=pb.SAMPLER_UNSPECIFIED
                if info.default_sampler is None
                else _SAMPLER[info.default_sampler],
                default_guidance=info.default_guidance,
            )
        )
    return msg


def _default_guidance_from_proto(msg: pb.ModelInfo) -> float | None:
    """ModelInfo.default_guidance; from a server that predates it, DiffusionInfo's."""
    if msg.HasField("default_guidance"):
        return msg.default_guidance
    if msg.HasField("diffusion") and msg.diffusion.HasField("default_guidance"):
        return msg.diffusion.default_guidance
    return None


def model_info_from_proto(msg: pb.ModelInfo) -> ModelInfo:
    diffusion = msg.diffusion if msg.HasField("diffusion") else None
    return ModelInfo(
        name=msg.name,
        kind=_enum_from_pb(_KIND_FROM_PB, msg.kind, "kind", pb.ModelKind),
        version=msg.version,
        image_shape=_image_shape_from_proto(msg.image_shape),
        max_images=msg.max_images_per_request,
        num_timesteps=diffusion.num_timesteps if diffusion else None,
        default_steps=diffusion.default_steps if diffusion else None,
        default_sampler=_SAMPLER_FROM_PB.get(diffusion.default_sampler) if diffusion else None,
        default_guidance=_default_guidance_from_proto(msg),
        metrics=json.loads(msg.metrics_json) if msg.metrics_json else dict(msg.metrics),
        description=msg.description,
        dataset=msg.dataset,
        num_classes=msg.num_classes or None,
        latent_dim=msg.latent_dim or None,
        input_shape=_image_shape_from_proto(msg.input_shape) if msg.HasField("input_shape") else None,
        input_description=msg.input_description,
        default_temperature=msg.default_temperature if msg.HasField("default_temperature") else None,
        style_layers=msg.style_layers or None,
        likelihood=msg.log_likelihood,
        num_steps=msg.num_steps or None,
    )


def _image_shape_to_proto(shape: tuple[int, int, int]) -> pb.ImageShape:
    c, h, w = shape
    return pb.ImageShape(channels=c, height=h, width=w)


def _image_shape_from_proto(msg: pb.ImageShape) -> tuple[int, int, int]:
    return msg.channels, msg.height, msg.width


def list_models_request() -> pb.ListModelsRequest:
    return pb.ListModelsRequest()


def list_models_response(infos: Iterable[ModelInfo]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info_to_proto(i) for i in sorted(infos, key=lambda i: i.name)])


def model_infos_from_response(msg: pb.ListModelsResponse) -> list[ModelInfo]:
    return [model_info_from_proto(m) for m in msg.models]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- Health (grpc.health.v1) -----------------------------------------------------------------


def health_status(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


def health_check_request(service: str = "") -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def health_status_name(msg: health_pb2.HealthCheckResponse) -> str:
    """HealthCheckResponse -> "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN"."""
    return health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status)
