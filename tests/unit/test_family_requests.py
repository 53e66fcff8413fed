"""Translate requests on the wire, class labels and interpolation fields, and the latent slerp."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from genserve import images
from genserve.serving import convert
from genserve.serving.domain import GenerateRequest, ModelInfo
from genserve.serving.errors import InvalidArgument
from genserve.serving.runner import slerp
from genserve.signature import ModelKind

FAST = settings(max_examples=60, deadline=None)

pictures = hnp.arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3])))


def round_trip(msg):
    """What the server parses from ``msg`` after it crossed the wire."""
    return convert.translate_request_from_proto(type(msg).FromString(msg.SerializeToString()))


@FAST
@given(hnp.arrays(np.uint8, st.tuples(st.integers(0, 4), st.integers(1, 6), st.integers(1, 6))))
def test_a_raw_batch_without_a_channel_axis_arrives_as_one_channel_images(batch):
    request, _ = round_trip(convert.translate_request_to_proto("m", raw=batch))
    assert request.num_images == len(batch)
    for sent, got in zip(batch, request.images, strict=True):
        np.testing.assert_array_equal(got, sent[..., None])


@FAST
@given(st.lists(pictures, min_size=1, max_size=4))
def test_pngs_arrive_as_their_pixels_with_a_channel_axis(pixels):
    msg = convert.translate_request_to_proto("m", pngs=[images.encode_png(p) for p in pixels])
    request, encoding = round_trip(msg)
    assert encoding is convert.ImageEncoding.PNG_AND_RAW
    for sent, got in zip(pixels, request.images, strict=True):
        np.testing.assert_array_equal(got, sent)


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_sent_as_a_png_are_pixels_or_invalid_argument_naming_the_index(data):
    msg = convert.translate_request_to_proto("m", pngs=[images.encode_png(np.zeros((2, 2, 1), np.uint8)), data])
    try:
        request, _ = round_trip(msg)
    except InvalidArgument as exc:
        assert str(exc).startswith("image 1 ")
    else:
        assert request.images[1].dtype == np.uint8 and request.images[1].ndim == 3


def test_priority_timeout_and_encoding_travel_with_a_translate_request():
    msg = convert.translate_request_to_proto(
        "m", raw=np.zeros((1, 2, 2), np.uint8), encoding=convert.ImageEncoding.PNG, priority=2, timeout=0.25
    )
    request, encoding = round_trip(msg)
    assert (request.model, request.priority, request.timeout, encoding) == ("m", 2, 0.25, convert.ImageEncoding.PNG)


def test_a_zero_translate_timeout_is_invalid_argument():
    msg = convert.translate_request_to_proto("m", raw=np.zeros((1, 2, 2), np.uint8))
    msg.timeout_ms = 0
    with pytest.raises(InvalidArgument, match="timeout_ms must be > 0"):
        convert.translate_request_from_proto(msg)


def test_a_translate_request_without_a_model_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="model must be set"):
        convert.translate_request_from_proto(convert.translate_request_to_proto("", raw=np.zeros((1, 2, 2), np.uint8)))


@pytest.mark.parametrize(("label", "target"), [(None, None), (0, None), (9, -(2**63)), (3, 2**63 - 1)])
def test_label_and_interpolation_target_survive_the_wire(label, target):
    request = GenerateRequest("m", 4, seed=1, label=label, interpolate_to_seed=target)
    msg = convert.generate_request_to_proto(request)
    back, _ = convert.generate_request_from_proto(type(msg).FromString(msg.SerializeToString()))
    assert (back.label, back.interpolate_to_seed) == (label, target)


def test_model_info_carries_classes_latent_and_translator_inputs():
    sampler = ModelInfo("c", ModelKind.SAMPLER, "1", (1, 28, 28), 256, num_classes=10, latent_dim=64)
    translator = ModelInfo(
        "t", ModelKind.TRANSLATOR, "1", (1, 28, 28), 256, input_shape=(1, 7, 7), input_description="4x4 means"
    )
    for info in (sampler, translator):
        assert convert.model_info_from_proto(convert.model_info_to_proto(info)) == info


def test_from_uint8_is_v_over_127_5_minus_1_and_to_uint8_inverts_it():
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = images.from_uint8(levels)
    assert x.shape == (1, 1, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), np.arange(256) / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(images.to_uint8(x), levels)


latents = hnp.arrays(np.float32, 8, elements=st.floats(-4, 4, width=32))


@FAST
@given(latents, latents, st.integers(2, 12))
def test_slerp_starts_and_ends_exactly_at_the_two_latents(a, b, frames):
    path = slerp(a, b, np.arange(frames) / (frames - 1))
    assert path.shape == (frames, 8) and path.dtype == np.float32
    assert path[0].tobytes() == a.tobytes()
    assert path[-1].tobytes() == b.tobytes()


def test_slerp_keeps_the_norm_of_orthogonal_unit_latents_on_the_arc():
    a, b = np.eye(4, dtype=np.float32)[:2]
    path = slerp(a, b, np.linspace(0, 1, 9))
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)  # a line would dip to 0.71
    np.testing.assert_allclose(path[4], [np.sqrt(0.5), np.sqrt(0.5), 0, 0], atol=1e-6)


def test_slerp_of_parallel_latents_falls_back_to_the_line():
    a = np.array([1.0, 2.0], np.float32)
    np.testing.assert_allclose(slerp(a, 2 * a, np.array([0.5])), [1.5 * a], atol=1e-6)
