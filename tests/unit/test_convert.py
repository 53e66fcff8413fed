"""Protobuf <-> domain conversions (serving/convert.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from genserve.images import decode_png
from genserve.schedule import Sampler
from genserve.serving import convert
from genserve.serving.convert import ImageEncoding
from genserve.serving.domain import GenerateRequest, ModelInfo
from genserve.serving.errors import InvalidArgument
from genserve.signature import ModelKind

FAST = settings(max_examples=60, deadline=None)

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
uint8_arrays = hnp.arrays(np.uint8, shapes)
float32_arrays = hnp.arrays(np.float32, shapes, elements=st.floats(width=32, allow_nan=True, allow_infinity=True))
images = hnp.arrays(
    np.uint8,
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3])),
)


@FAST
@given(st.one_of(uint8_arrays, float32_arrays))
def test_tensor_round_trip_keeps_dtype_shape_and_bytes(array):
    back = convert.tensor_from_proto(convert.tensor_to_proto(array))
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    assert back.tobytes() == array.tobytes()


@FAST
@given(hnp.arrays(np.dtype(">f4"), hnp.array_shapes(max_dims=3)))
def test_big_endian_float32_travels_as_little_endian_values(array):
    back = convert.tensor_from_proto(convert.tensor_to_proto(array))
    np.testing.assert_array_equal(back, array)


def test_other_dtypes_are_refused():
    with pytest.raises(ValueError, match="uint8 or float32"):
        convert.tensor_to_proto(np.zeros(3, dtype=np.int64))


@FAST
@given(images)
def test_png_and_raw_of_an_image_hold_the_same_pixels(image):
    msg = convert.image_to_proto(image, ImageEncoding.PNG_AND_RAW)
    raw = convert.tensor_from_proto(msg.raw)
    np.testing.assert_array_equal(raw, image)
    png = decode_png(msg.png)
    np.testing.assert_array_equal(png, image[:, :, 0] if image.shape[2] == 1 else image)


def test_encoding_chooses_which_representations_are_sent():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    png_only = convert.image_to_proto(image, ImageEncoding.PNG)
    raw_only = convert.image_to_proto(image, ImageEncoding.RAW)
    assert png_only.png and not png_only.HasField("raw")
    assert raw_only.HasField("raw") and raw_only.png == b""


@FAST
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 8), st.integers(1, 8), st.just(1))))
def test_response_round_trip_returns_the_batch(batch):
    response = convert.generate_response_to_proto("m", batch, ImageEncoding.RAW)
    assert response.model == "m"
    np.testing.assert_array_equal(convert.images_from_response(response), batch)


def test_images_from_a_png_only_response_is_an_error():
    response = convert.generate_response_to_proto("m", np.zeros((1, 2, 2, 1), np.uint8), ImageEncoding.PNG)
    with pytest.raises(ValueError, match="no raw tensor"):
        convert.images_from_response(response)


requests = st.builds(
    GenerateRequest,
    model=st.text(min_size=1, max_size=20),
    num_images=st.integers(-(2**31), 2**31 - 1),
    seed=st.integers(-(2**63), 2**63 - 1),
    steps=st.none() | st.integers(-(2**31), 2**31 - 1),
    sampler=st.none() | st.sampled_from(Sampler),
    eta=st.none() | st.floats(width=32, allow_nan=False),
    first_index=st.integers(0, 2**32 - 1),
)


@FAST
@given(requests, st.sampled_from(ImageEncoding))
def test_generate_request_round_trip(request, encoding):
    back, back_encoding = convert.generate_request_from_proto(convert.generate_request_to_proto(request, encoding))
    assert back == request
    assert back_encoding is encoding


def test_unset_optional_fields_mean_the_model_defaults_and_unspecified_encoding_means_both():
    msg = convert.generate_request_to_proto(GenerateRequest("m", 2))
    msg.ClearField("encoding")
    request, encoding = convert.generate_request_from_proto(msg)
    assert (request.steps, request.sampler, request.eta) == (None, None, None)
    assert encoding is ImageEncoding.PNG_AND_RAW


def test_steps_zero_is_kept_as_an_explicit_value_not_a_default():
    request, _ = convert.generate_request_from_proto(
        convert.generate_request_to_proto(GenerateRequest("m", 1, steps=0))
    )
    assert request.steps == 0


@pytest.mark.parametrize(("field", "allowed"), [("sampler", "SAMPLER_DDIM"), ("encoding", "IMAGE_ENCODING_RAW")])
def test_enum_values_the_proto_does_not_define_are_invalid_argument(field, allowed):
    msg = convert.generate_request_to_proto(GenerateRequest("m", 1))
    setattr(msg, field, 99)
    with pytest.raises(InvalidArgument, match=f"{field} must be one of .*{allowed}.*got 99"):
        convert.generate_request_from_proto(msg)


def test_a_request_without_a_model_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="model must be set"):
        convert.generate_request_from_proto(convert.generate_request_to_proto(GenerateRequest("", 1)))


def test_a_tensor_whose_bytes_do_not_match_its_shape_is_invalid_argument():
    msg = convert.tensor_to_proto(np.zeros((2, 3), np.float32))
    msg.shape[:] = [2, 4]
    with pytest.raises(InvalidArgument, match="needs 32 bytes, got 24"):
        convert.tensor_from_proto(msg)


def test_a_tensor_without_a_dtype_is_invalid_argument():
    msg = convert.tensor_to_proto(np.zeros(3, np.uint8))
    msg.ClearField("dtype")
    with pytest.raises(InvalidArgument, match="tensor dtype"):
        convert.tensor_from_proto(msg)


@pytest.mark.parametrize("shape", [(2**32, 2**32), (2**32, 2**32, 28, 28), (2**62, 4, 1, 1), (2**63 - 1, 2**63 - 1)])
def test_a_tensor_whose_shape_product_overflows_int64_is_invalid_argument(shape):
    """The element count wraps around int64 to 0 (or to the byte count): it must not match empty data."""
    msg = convert.tensor_to_proto(np.zeros(0, np.uint8))
    msg.shape[:] = shape
    with pytest.raises(InvalidArgument, match="needs"):
        convert.tensor_from_proto(msg)


def test_a_tensor_of_more_dimensions_than_numpy_has_is_invalid_argument():
    msg = convert.tensor_to_proto(np.zeros(1, np.uint8))
    msg.shape[:] = [1] * 65
    with pytest.raises(InvalidArgument, match="at most 32 dimensions, got 65"):
        convert.tensor_from_proto(msg)


@FAST
@given(
    dtype=st.integers(-3, 4),
    shape=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 4), max_size=70),
    data=st.binary(max_size=64),
)
def test_any_wire_tensor_decodes_or_is_invalid_argument(dtype, shape, data):
    msg = convert.tensor_to_proto(np.zeros(0, np.uint8))
    msg.dtype, msg.shape[:], msg.data = dtype, shape, data
    try:
        array = convert.tensor_from_proto(msg)
    except InvalidArgument:
        return
    assert list(array.shape) == shape and array.nbytes == len(data)


DIFFUSION_INFO = ModelInfo(
    name="ddpm",
    kind=ModelKind.DIFFUSION,
    version="3",
    image_shape=(1, 28, 28),
    max_images=256,
    num_timesteps=1000,
    default_steps=1000,
    default_sampler=Sampler.DDPM,
    metrics={"fid": 12.5, "num_classes_present": 10, "onnx_sha256": "ab12", "ok": True, "per_class": [0.1, 0.2]},
    description="a diffusion model",
    dataset="MNIST",
)
SAMPLER_INFO = ModelInfo(name="gan", kind=ModelKind.SAMPLER, version="1", image_shape=(3, 64, 32), max_images=8)


@pytest.mark.parametrize("info", [DIFFUSION_INFO, SAMPLER_INFO], ids=["diffusion", "sampler"])
def test_model_info_round_trip(info):
    response = convert.list_models_response([info])
    assert convert.model_infos_from_response(response) == [info]


def test_a_guided_models_default_scale_is_read_from_model_info_or_from_an_older_servers_diffusion_info():
    import dataclasses

    info = dataclasses.replace(DIFFUSION_INFO, num_classes=10, default_guidance=2.0)
    msg = convert.model_info_to_proto(info)
    assert (msg.default_guidance, msg.diffusion.default_guidance) == (2.0, 2.0)
    msg.ClearField("default_guidance")  # what a server from before ModelInfo.default_guidance sends
    assert convert.model_info_from_proto(msg).default_guidance == 2.0
    msg.diffusion.ClearField("default_guidance")
    assert convert.model_info_from_proto(msg).default_guidance is None


def test_numeric_metrics_are_also_a_typed_map():
    msg = convert.model_info_to_proto(DIFFUSION_INFO)
    assert dict(msg.metrics) == {"fid": 12.5, "num_classes_present": 10.0}


def test_list_models_response_is_sorted_by_name():
    response = convert.list_models_response([DIFFUSION_INFO, SAMPLER_INFO])
    assert [m.name for m in response.models] == ["ddpm", "gan"]


def test_health_status_names():
    from grpc_health.v1 import health_pb2

    assert convert.health_status_name(health_pb2.HealthCheckResponse(status=convert.health_status(True))) == "SERVING"
    assert convert.health_status_name(health_pb2.HealthCheckResponse(status=convert.health_status(False))) == (
        "NOT_SERVING"
    )
