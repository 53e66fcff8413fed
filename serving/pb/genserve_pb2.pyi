from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_SAMPLER: _ClassVar[ModelKind]
    MODEL_KIND_TRANSLATOR: _ClassVar[ModelKind]
    MODEL_KIND_DIFFUSION: _ClassVar[ModelKind]
    MODEL_KIND_AUTOREGRESSIVE: _ClassVar[ModelKind]

class Sampler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_UNSPECIFIED: _ClassVar[Sampler]
    SAMPLER_DDPM: _ClassVar[Sampler]
    SAMPLER_DDIM: _ClassVar[Sampler]

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG_AND_RAW: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_RAW: _ClassVar[ImageEncoding]

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_SAMPLER: ModelKind
MODEL_KIND_TRANSLATOR: ModelKind
MODEL_KIND_DIFFUSION: ModelKind
MODEL_KIND_AUTOREGRESSIVE: ModelKind
SAMPLER_UNSPECIFIED: Sampler
SAMPLER_DDPM: Sampler
SAMPLER_DDIM: Sampler
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_PNG_AND_RAW: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_RAW: ImageEncoding
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_FLOAT32: DataType

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "version", "image_shape", "max_images_per_request", "diffusion", "metrics", "metrics_json", "description", "dataset", "num_classes", "latent_dim", "input_shape", "input_description", "default_temperature", "style_layers", "log_likelihood", "num_steps", "request_fields", "default_guidance")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DIFFUSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: ModelKind
    version: str
    image_shape: ImageShape
    max_images_per_request: int
    diffusion: DiffusionInfo
    metrics: _containers.ScalarMap[str, float]
    metrics_json: str
    description: str
    dataset: str
    num_classes: int
    latent_dim: int
    input_shape: ImageShape
    input_description: str
    default_temperature: float
    style_layers: int
    log_likelihood: bool
    num_steps: int
    request_fields: _containers.RepeatedScalarFieldContainer[str]
    default_guidance: float
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., version: _Optional[str] = ..., image_shape: _Optional[_Union[ImageShape, _Mapping]] = ..., max_images_per_request: _Optional[int] = ..., diffusion: _Optional[_Union[DiffusionInfo, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., metrics_json: _Optional[str] = ..., description: _Optional[str] = ..., dataset: _Optional[str] = ..., num_classes: _Optional[int] = ..., latent_dim: _Optional[int] = ..., input_shape: _Optional[_Union[ImageShape, _Mapping]] = ..., input_description: _Optional[str] = ..., default_temperature: _Optional[float] = ..., style_layers: _Optional[int] = ..., log_likelihood: _Optional[bool] = ..., num_steps: _Optional[int] = ..., request_fields: _Optional[_Iterable[str]] = ..., default_guidance: _Optional[float] = ...) -> None: ...

class ImageShape(_message.Message):
    __slots__ = ("channels", "height", "width")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class DiffusionInfo(_message.Message):
    __slots__ = ("num_timesteps", "default_steps", "default_sampler", "default_guidance")
    NUM_TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    num_timesteps: int
    default_steps: int
    default_sampler: Sampler
    default_guidance: float
    def __init__(self, num_timesteps: _Optional[int] = ..., default_steps: _Optional[int] = ..., default_sampler: _Optional[_Union[Sampler, str]] = ..., default_guidance: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "num_images", "seed", "steps", "sampler", "eta", "encoding", "timeout_ms", "priority", "label", "interpolate_to_seed", "guidance", "first_index", "temperature", "truncation", "mix_seed", "mix_layer")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATE_TO_SEED_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MIX_SEED_FIELD_NUMBER: _ClassVar[int]
    MIX_LAYER_FIELD_NUMBER: _ClassVar[int]
    model: str
    num_images: int
    seed: int
    steps: int
    sampler: Sampler
    eta: float
    encoding: ImageEncoding
    timeout_ms: int
    priority: int
    label: int
    interpolate_to_seed: int
    guidance: float
    first_index: int
    temperature: float
    truncation: float
    mix_seed: int
    mix_layer: int
    def __init__(self, model: _Optional[str] = ..., num_images: _Optional[int] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., sampler: _Optional[_Union[Sampler, str]] = ..., eta: _Optional[float] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., timeout_ms: _Optional[int] = ..., priority: _Optional[int] = ..., label: _Optional[int] = ..., interpolate_to_seed: _Optional[int] = ..., guidance: _Optional[float] = ..., first_index: _Optional[int] = ..., temperature: _Optional[float] = ..., truncation: _Optional[float] = ..., mix_seed: _Optional[int] = ..., mix_layer: _Optional[int] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("request", "preview_every")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    request: GenerateRequest
    preview_every: int
    def __init__(self, request: _Optional[_Union[GenerateRequest, _Mapping]] = ..., preview_every: _Optional[int] = ...) -> None: ...

class GenerateProgress(_message.Message):
    __slots__ = ("step", "total_steps", "previews", "result")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREVIEWS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    previews: _containers.RepeatedCompositeFieldContainer[Tensor]
    result: GenerateResponse
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., previews: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("model", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("model", "pngs", "raw", "encoding", "timeout_ms", "priority")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PNGS_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    pngs: _containers.RepeatedScalarFieldContainer[bytes]
    raw: Tensor
    encoding: ImageEncoding
    timeout_ms: int
    priority: int
    def __init__(self, model: _Optional[str] = ..., pngs: _Optional[_Iterable[bytes]] = ..., raw: _Optional[_Union[Tensor, _Mapping]] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., timeout_ms: _Optional[int] = ..., priority: _Optional[int] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("model", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class LogLikelihoodRequest(_message.Message):
    __slots__ = ("model", "pngs", "raw", "timeout_ms", "priority")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PNGS_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    pngs: _containers.RepeatedScalarFieldContainer[bytes]
    raw: Tensor
    timeout_ms: int
    priority: int
    def __init__(self, model: _Optional[str] = ..., pngs: _Optional[_Iterable[bytes]] = ..., raw: _Optional[_Union[Tensor, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., priority: _Optional[int] = ...) -> None: ...

class LogLikelihoodResponse(_message.Message):
    __slots__ = ("model", "bits_per_dim")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    model: str
    bits_per_dim: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., bits_per_dim: _Optional[_Iterable[float]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("png", "raw")
    PNG_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    raw: Tensor
    def __init__(self, png: _Optional[bytes] = ..., raw: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...
