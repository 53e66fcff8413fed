"""Translate, class labels and latent interpolation over a real server with the real client.

The tiny models (tests/fixtures.py): ``cgan-tiny`` (class-conditional sampler), ``pix2pix-tiny``
(28x28 grayscale -> 28x28) and ``superres-tiny`` (7x7 -> 28x28), beside ``dcgan-tiny`` and
``ddpm-tiny``."""

from __future__ import annotations

import concurrent.futures
import io
import re
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genserve.client import GenserveClient
from genserve.images import decode_png, encode_png, from_uint8, to_uint8
from genserve.manifest import ONNX_FILE, Manifest
from genserve.serving import convert
from genserve.serving.pb import genserve_pb2_grpc
from genserve.signature import ModelKind

DDPM, GAN, CGAN, PIX2PIX, SUPERRES = "ddpm-tiny", "dcgan-tiny", "cgan-tiny", "pix2pix-tiny", "superres-tiny"
NUM_CLASSES = 10


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def digits(n: int, size: int = 28, channels: int | None = None, seed: int = 0) -> np.ndarray:
    """Random uint8 images (n, size, size) or (n, size, size, channels)."""
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def reference(tiny_models: Path, model: str, sources: np.ndarray) -> np.ndarray:
    """The translator's graph run directly on uint8 (N, h, w): v / 127.5 - 1 in, uint8 (N, H, W, 1) out."""
    session = ort.InferenceSession(str(tiny_models / model / ONNX_FILE), providers=["CPUExecutionProvider"])
    return to_uint8(session.run(None, {"source": from_uint8(sources[..., None])})[0])


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def metric(server, name: str, model: str) -> float:
    """Current value of a per-model Prometheus sample, 0.0 if it has none yet."""
    match = re.search(rf'^{name}{{model="{model}"}} (\S+)$', server.scrape_metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- ListModels --------------------------------------------------------------------------------


def test_list_models_reports_classes_latents_and_translator_inputs(client: GenserveClient, tiny_models: Path):
    infos = {info.name: info for info in client.list_models()}
    cgan, pix2pix, superres = infos[CGAN], infos[PIX2PIX], infos[SUPERRES]
    assert (cgan.kind, cgan.num_classes, cgan.latent_dim, cgan.input_shape) == (ModelKind.SAMPLER, 10, 8, None)
    assert (infos[GAN].num_classes, infos[GAN].latent_dim) == (None, 100)
    assert pix2pix.kind is superres.kind is ModelKind.TRANSLATOR
    assert (pix2pix.input_shape, pix2pix.image_shape) == ((1, 28, 28), (1, 28, 28))
    assert (superres.input_shape, superres.image_shape) == ((1, 7, 7), (1, 28, 28))
    for info in (pix2pix, superres):
        assert info.input_description == Manifest.load(tiny_models / info.name).input_description != ""
    assert pix2pix.num_classes is pix2pix.latent_dim is None
    assert infos[DDPM].input_shape is None and infos[DDPM].input_description == ""


# --- Translate ---------------------------------------------------------------------------------


def test_translate_raw_runs_the_graph_on_v_over_127_5_minus_1(client: GenserveClient, tiny_models: Path):
    sources = digits(5)
    out = client.translate(PIX2PIX, sources)
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(out, reference(tiny_models, PIX2PIX, sources))


def test_translate_accepts_a_channel_axis_and_pngs_with_the_same_result(client: GenserveClient):
    sources = digits(3, seed=1)
    raw = client.translate(PIX2PIX, sources)
    np.testing.assert_array_equal(client.translate(PIX2PIX, sources[..., None]), raw)
    np.testing.assert_array_equal(client.translate(PIX2PIX, [encode_png(s) for s in sources]), raw)
    pngs = client.translate_png(PIX2PIX, sources)
    np.testing.assert_array_equal(np.stack([decode_png(p) for p in pngs]), raw[..., 0])


def test_one_bit_pngs_are_read_as_grey_levels_and_palette_pngs_as_rgb(client: GenserveClient):
    grey = np.zeros((28, 28), np.uint8)
    grey[7:21, 7:21] = 255
    one_bit, palette = png_of(Image.fromarray(grey).convert("1")), png_of(Image.fromarray(grey).convert("P"))
    np.testing.assert_array_equal(client.translate(PIX2PIX, [one_bit]), client.translate(PIX2PIX, grey[None]))
    err = rpc_error(lambda: client.translate(PIX2PIX, [palette]))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "got 28x28 RGB at index 0" in err.details()


def test_super_resolution_takes_7x7_and_returns_28x28(client: GenserveClient, tiny_models: Path):
    sources = digits(4, size=7, seed=2)
    out = client.translate(SUPERRES, sources)
    assert out.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(out, reference(tiny_models, SUPERRES, sources))


def test_a_translated_image_depends_only_on_its_input(client: GenserveClient):
    sources = digits(40, seed=3)  # more than the engine's batch of 16: three engine calls
    whole = client.translate(PIX2PIX, sources)
    np.testing.assert_array_equal(client.translate(PIX2PIX, sources[17:19]), whole[17:19])


def test_translations_of_concurrent_calls_share_batches_and_keep_their_bytes(start_server):
    server = start_server("--max-queue-delay-ms", "200", "--max-queue-size", "8", metrics=True).wait_until_serving()
    inputs = [digits(3, seed=10 + i) for i in range(8)]
    with GenserveClient(server.target, timeout=60) as client:
        alone = [client.translate(PIX2PIX, x) for x in inputs]
        batches_before = metric(server, "genserve_batch_size_count", PIX2PIX)
        with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
            together = list(pool.map(lambda x: client.translate(PIX2PIX, x), inputs))
    for a, b in zip(alone, together, strict=True):
        assert a.tobytes() == b.tobytes()
    batches = metric(server, "genserve_batch_size_count", PIX2PIX) - batches_before
    assert batches < len(inputs), "no engine call held two requests"


def test_translate_is_rejected_at_once_when_the_queue_is_full(start_server):
    server = start_server("--max-queue-delay-ms", "2000", "--max-queue-size", "1", metrics=True)
    server.wait_until_serving()
    with GenserveClient(server.target, timeout=60) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.translate, PIX2PIX, digits(1))  # waits 2 s for a fuller batch
        wait_for(lambda: metric(server, "genserve_queued_requests", PIX2PIX) == 1)
        err = rpc_error(lambda: client.translate(PIX2PIX, digits(1)))
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert waiting.result().shape == (1, 28, 28, 1)


def test_a_translate_past_its_timeout_in_the_queue_fails_and_never_reaches_the_engine(start_server):
    server = start_server("--max-queue-delay-ms", "2000", metrics=True).wait_until_serving()
    with GenserveClient(server.target, timeout=60) as client:
        err = rpc_error(lambda: client.translate(PIX2PIX, digits(1), timeout_ms=200))
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert metric(server, "genserve_batch_size_count", PIX2PIX) == 0


def test_translate_counts_in_the_request_metrics(server, client: GenserveClient):
    client.translate(SUPERRES, digits(1, size=7))
    assert re.search(rf'genserve_requests_total{{code="OK",model="{SUPERRES}"}} [1-9]', server.scrape_metrics())


def with_raw_bytes(msg, data: bytes):
    """``msg`` with its raw tensor's bytes replaced (the shape no longer matches them)."""
    msg.raw.data = data
    return msg


INVALID_TRANSLATIONS = [
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=digits(2, size=32, channels=3)),
        "expected 28x28 grayscale images for pix2pix-tiny, got 32x32 RGB at index 0",
        id="wrong-size-and-channels",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(
            PIX2PIX, pngs=[encode_png(d) for d in digits(3)] + [encode_png(digits(1, size=32, channels=3)[0])]
        ),
        "expected 28x28 grayscale images for pix2pix-tiny, got 32x32 RGB at index 3",
        id="wrong-png-at-index-3",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(SUPERRES, raw=digits(1)),
        "expected 7x7 grayscale images for superres-tiny, got 28x28 grayscale at index 0",
        id="wrong-size",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=digits(1, channels=3)),
        "expected 28x28 grayscale images for pix2pix-tiny, got 28x28 RGB at index 0",
        id="wrong-channels",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, pngs=[encode_png(digits(1, channels=4)[0])]),
        "expected 28x28 grayscale images for pix2pix-tiny, got 28x28 RGBA at index 0",
        id="rgba-png",
    ),
    pytest.param(
        lambda: with_raw_bytes(convert.translate_request_to_proto(PIX2PIX, raw=digits(2)), bytes(100)),
        "tensor of uint8 [2, 28, 28] needs 1568 bytes, got 100",
        id="wrong-byte-count",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=digits(257)),
        "the number of images must be in [1, 256] for model pix2pix-tiny, got 257",
        id="too-many",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=digits(0)),
        "the number of images must be in [1, 256] for model pix2pix-tiny, got 0",
        id="none",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, pngs=[encode_png(digits(1)[0]), b"\x89PNG\r\n junk"]),
        "image 1 is not a decodable PNG",
        id="undecodable-png",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=np.zeros((1, 28, 28), np.float32)),
        "raw must be a uint8 tensor (N, H, W) or (N, H, W, C), got float32 [1, 28, 28]",
        id="float-tensor",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=np.zeros((28, 28), np.uint8)),
        "raw must be a uint8 tensor (N, H, W) or (N, H, W, C), got uint8 [28, 28]",
        id="no-batch-axis",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=digits(1), pngs=[encode_png(digits(1)[0])]),
        "set either pngs or raw, not both",
        id="both",
    ),
    pytest.param(lambda: convert.translate_request_to_proto(PIX2PIX), "no images: set pngs", id="neither"),
    pytest.param(
        lambda: convert.translate_request_to_proto(GAN, raw=digits(1)),
        "Translate takes translator models; dcgan-tiny is a sampler model (use Generate)",
        id="sampler",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(DDPM, raw=digits(1)),
        "Translate takes translator models; ddpm-tiny is a diffusion model (use Generate)",
        id="diffusion",
    ),
    pytest.param(
        lambda: convert.translate_request_to_proto(PIX2PIX, raw=digits(1), priority=9),
        "priority must be in [0, 1] for model pix2pix-tiny",
        id="priority",
    ),
]


@pytest.mark.parametrize(("make_request", "message"), INVALID_TRANSLATIONS)
def test_invalid_translations_are_invalid_argument_saying_what_is_expected(server, make_request, message):
    with grpc.insecure_channel(server.target) as channel:
        stub = genserve_pb2_grpc.GenerationServiceStub(channel)
        err = rpc_error(lambda: stub.Translate(make_request(), timeout=60))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert message in err.details()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from([PIX2PIX, SUPERRES, GAN, DDPM, "", "no-such-model"]),
    shape=st.sampled_from([(1, 7, 7), (2, 28, 28), (1, 28, 28, 3), (0, 28, 28), (28, 28), (1, 1, 28, 28, 1)]),
    as_png=st.booleans(),
    junk=st.sampled_from([None, b"", b"\x89PNG\r\n\x1a\n", bytes(64)]),
    encoding=st.sampled_from([0, 1, 2, 3, 99]),
    priority=st.sampled_from([0, 1, 2, 2**32 - 1]),
    timeout_ms=st.sampled_from([None, 0, 1, 60_000]),
)
def test_no_translate_request_a_client_can_send_gets_internal_or_unknown(
    server, model, shape, as_png, junk, encoding, priority, timeout_ms
):
    """Client mistakes map to INVALID_ARGUMENT, NOT_FOUND or DEADLINE_EXCEEDED; valid ones succeed."""
    pixels = np.zeros(shape, np.uint8)
    pngs = [encode_png(p) for p in pixels] if as_png and pixels.ndim in (3, 4) else []
    msg = convert.translate_request_to_proto(model, raw=None if pngs else pixels, pngs=pngs + ([junk] if junk else []))
    msg.encoding, msg.priority = encoding, priority
    if timeout_ms is not None:
        msg.timeout_ms = timeout_ms
    with grpc.insecure_channel(server.target) as channel:
        try:
            genserve_pb2_grpc.GenerationServiceStub(channel).Translate(msg, timeout=60)
        except grpc.RpcError as err:
            expected = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED}
            assert err.code() in expected, f"{err.code().name}: {err.details()}"
            assert err.details(), "an error without a message"


def test_translate_with_an_unknown_model_is_not_found(client: GenserveClient):
    err = rpc_error(lambda: client.translate("no-such-model", digits(1)))
    assert err.code() is grpc.StatusCode.NOT_FOUND and PIX2PIX in err.details()


def test_generate_on_a_translator_is_invalid_argument(client: GenserveClient):
    err = rpc_error(lambda: client.generate(PIX2PIX, 1))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "pix2pix-tiny is a translator model: send it images with Translate" in err.details()


# --- Class labels ------------------------------------------------------------------------------


def test_a_label_sets_the_class_of_every_image(client: GenserveClient):
    three = client.generate(CGAN, 4, seed=1, label=3)
    assert not np.array_equal(three, client.generate(CGAN, 4, seed=1, label=4))
    np.testing.assert_array_equal(client.generate(CGAN, 4, seed=1, label=3), three)
    np.testing.assert_array_equal(client.generate(CGAN, 2, seed=1, label=3), three[:2])


def test_an_unset_label_draws_a_class_per_image_from_seed_and_index(client: GenserveClient):
    n = 12
    random = client.generate(CGAN, n, seed=5)
    by_label = [client.generate(CGAN, n, seed=5, label=k) for k in range(NUM_CLASSES)]
    classes = []
    for i in range(n):
        (match,) = [k for k in range(NUM_CLASSES) if np.array_equal(by_label[k][i], random[i])]
        classes.append(match)
    assert len(set(classes)) > 2, f"classes {classes} look constant"
    np.testing.assert_array_equal(client.generate(CGAN, 3, seed=5), random[:3])  # batch invariant


@pytest.mark.parametrize(
    ("model", "label", "message"),
    [
        (CGAN, -1, "label must be in [0, 10) for model cgan-tiny, got -1"),
        (CGAN, 10, "label must be in [0, 10) for model cgan-tiny, got 10"),
        (GAN, 0, "label applies to class-conditional models only; dcgan-tiny is not one"),
        (DDPM, 0, "label applies to class-conditional models only; ddpm-tiny is not one"),
    ],
)
def test_invalid_labels_are_invalid_argument_naming_the_range(client: GenserveClient, model, label, message):
    err = rpc_error(lambda: client.generate(model, 1, label=label, steps=3 if model == DDPM else None))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()


# --- Latent interpolation ----------------------------------------------------------------------


@pytest.mark.parametrize(("model", "label"), [(GAN, None), (CGAN, 7)])
def test_interpolation_frames_start_and_end_at_the_seeds_own_images(client: GenserveClient, model, label):
    frames = client.generate(model, 6, seed=11, interpolate_to_seed=12, label=label)
    assert frames.shape == (6, 28, 28, 1)
    first, last = client.generate(model, 1, seed=11, label=label), client.generate(model, 1, seed=12, label=label)
    assert frames[0].tobytes() == first[0].tobytes()
    assert frames[-1].tobytes() == last[0].tobytes()
    assert not np.array_equal(frames[1], frames[0]) and not np.array_equal(frames[1], frames[-1])


def test_an_unlabelled_interpolation_keeps_the_first_seeds_class(client: GenserveClient):
    frames = client.generate(CGAN, 5, seed=21, interpolate_to_seed=22)
    assert frames[0].tobytes() == client.generate(CGAN, 1, seed=21)[0].tobytes()
    (k,) = [k for k in range(NUM_CLASSES) if np.array_equal(client.generate(CGAN, 1, seed=21, label=k)[0], frames[0])]
    np.testing.assert_array_equal(client.generate(CGAN, 5, seed=21, interpolate_to_seed=22, label=k), frames)


def test_interpolation_frames_do_not_depend_on_batching(client: GenserveClient):
    frames = client.generate(GAN, 40, seed=1, interpolate_to_seed=2)  # frames 0..39 over several engine calls
    np.testing.assert_array_equal(client.generate(GAN, 40, seed=1, interpolate_to_seed=2), frames)


@pytest.mark.parametrize(
    ("model", "n", "message"),
    [
        (GAN, 1, "an interpolation needs num_images >= 2 frames (both ends included), got 1"),
        (DDPM, 4, "interpolate_to_seed applies to latent samplers only; ddpm-tiny is a diffusion model"),
        (PIX2PIX, 4, "pix2pix-tiny is a translator model"),
    ],
)
def test_interpolation_outside_latent_samplers_is_invalid_argument(client: GenserveClient, model, n, message):
    err = rpc_error(lambda: client.generate(model, n, interpolate_to_seed=3, steps=3 if model == DDPM else None))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()


# --- The command line --------------------------------------------------------------------------


def translate_cli(genserve, server, model: str, source: Path, out: Path):
    return genserve("translate", "--server", server.target, "--model", model, "--in", str(source), "--out", str(out))


def test_cli_translate_npy_to_npy(genserve, server, client: GenserveClient, tmp_path: Path):
    sources = digits(3, seed=30)
    np.save(tmp_path / "in.npy", sources)
    result = translate_cli(genserve, server, PIX2PIX, tmp_path / "in.npy", tmp_path / "out.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), client.translate(PIX2PIX, sources)[..., 0])


def test_cli_translate_a_folder_of_pngs_to_a_folder_with_the_same_names(
    genserve, server, client: GenserveClient, tmp_path: Path
):
    sources = digits(2, size=7, seed=31)
    (tmp_path / "in").mkdir()
    for name, image in zip(["a.png", "b.png"], sources, strict=True):
        (tmp_path / "in" / name).write_bytes(encode_png(image))
    result = translate_cli(genserve, server, SUPERRES, tmp_path / "in", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    expected = client.translate(SUPERRES, sources)
    for name, image in zip(["a.png", "b.png"], expected, strict=True):
        np.testing.assert_array_equal(decode_png((tmp_path / "out" / name).read_bytes()), image[..., 0])


def test_cli_translate_one_png_to_one_png(genserve, server, client: GenserveClient, tmp_path: Path):
    source = digits(1, seed=32)
    (tmp_path / "in.png").write_bytes(encode_png(source[0]))
    result = translate_cli(genserve, server, PIX2PIX, tmp_path / "in.png", tmp_path / "out.png")
    assert result.returncode == 0, result.stderr
    expected = client.translate(PIX2PIX, source)[0, ..., 0]
    np.testing.assert_array_equal(decode_png((tmp_path / "out.png").read_bytes()), expected)


def test_cli_translate_of_a_wrong_size_prints_invalid_argument(genserve, server, tmp_path: Path):
    np.save(tmp_path / "in.npy", digits(2))
    result = translate_cli(genserve, server, SUPERRES, tmp_path / "in.npy", tmp_path / "out.npy")
    assert result.returncode == 1
    assert result.stderr.startswith("INVALID_ARGUMENT: expected 7x7 grayscale images for superres-tiny")
    assert not (tmp_path / "out.npy").exists()


def test_cli_generate_with_a_label_and_an_interpolation(genserve, server, client: GenserveClient, tmp_path: Path):
    args = ("generate", "--server", server.target, "--model", CGAN, "-n", "4", "--seed", "3", "--label", "6")
    assert genserve(*args, "--out", str(tmp_path / "labelled.npy")).returncode == 0
    labelled = client.generate(CGAN, 4, seed=3, label=6)
    np.testing.assert_array_equal(np.load(tmp_path / "labelled.npy"), labelled[..., 0])
    assert genserve(*args, "--interpolate-to", "4", "--out", str(tmp_path / "walk.npy")).returncode == 0
    walk = client.generate(CGAN, 4, seed=3, label=6, interpolate_to_seed=4)
    np.testing.assert_array_equal(np.load(tmp_path / "walk.npy"), walk[..., 0])


def test_cli_models_lists_kind_shapes_classes_and_input_description(genserve, server, tiny_models: Path):
    result = genserve("models", "--server", server.target)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if not line.startswith(" ")}
    assert "sampler" in lines[CGAN] and "10 classes" in lines[CGAN] and "1x28x28" in lines[CGAN]
    assert "translator" in lines[SUPERRES] and "1x7x7 -> 1x28x28" in lines[SUPERRES]
    assert f"    input: {Manifest.load(tiny_models / SUPERRES).input_description}" in result.stdout.splitlines()
    assert "diffusion" in lines[DDPM]
