"""Requests of any size: the client splits a request above the model's per-request limit into
requests within it (``first_index`` set, so image i of a seed is the same whatever the split),
sends them a few at a time and puts the images back in order; the server checks ``first_index``."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from genserve.client import GenserveClient

DCGAN, DDPM, PIX2PIX = "dcgan-tiny", "ddpm-tiny", "pix2pix-tiny"


def test_a_thousand_images_equal_four_requests_of_250_byte_for_byte(client: GenserveClient):
    limit = {m.name: m.max_images for m in client.list_models()}[DCGAN]
    assert limit < 1000  # so the call below is split
    sizes: list[int] = []
    whole = client.generate(DCGAN, 1000, seed=7, progress=sizes.append)
    assert whole.shape[0] == 1000 and sizes == [250, 250, 250, 250]
    parts = [client.generate(DCGAN, 250, seed=7, first_index=start) for start in range(0, 1000, 250)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    np.testing.assert_array_equal(whole[:3], client.generate(DCGAN, 3, seed=7))  # image i of seed 7, unsplit
    np.testing.assert_array_equal(whole[997:], client.generate(DCGAN, 3, seed=7, first_index=997))


def test_a_split_diffusion_request_gives_each_image_its_own_noise(client: GenserveClient):
    whole = client.generate(DDPM, 300, seed=3, steps=2)
    tail = client.generate(DDPM, 4, seed=3, steps=2, first_index=296)
    diff = np.abs(whole[296:].astype(np.int16) - tail.astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999  # batch invariance, as in test_step_batching
    assert not np.array_equal(whole[:4], tail)


def test_png_generation_is_split_the_same_way(client: GenserveClient):
    pngs = client.generate_png(DCGAN, 300, seed=1)
    assert len(pngs) == 300 and all(p.startswith(b"\x89PNG") for p in pngs)


def test_a_thousand_images_translate_in_order(client: GenserveClient):
    sources = np.random.default_rng(0).integers(0, 256, (1000, 28, 28, 1), dtype=np.uint8)
    whole = client.translate(PIX2PIX, sources)
    assert whole.shape[0] == 1000
    for start in (0, 500, 996):
        np.testing.assert_array_equal(whole[start : start + 4], client.translate(PIX2PIX, sources[start : start + 4]))


def test_first_index_with_an_interpolation_is_invalid_argument(client: GenserveClient):
    with pytest.raises(grpc.RpcError) as err:
        client.generate(DCGAN, 4, seed=1, interpolate_to_seed=2, first_index=4)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "first_index must be 0 with interpolate_to_seed" in err.value.details()


def test_an_interpolation_above_the_limit_is_sent_whole_and_refused_by_the_server(client: GenserveClient):
    with pytest.raises(grpc.RpcError) as err:
        client.generate(DCGAN, 300, seed=1, interpolate_to_seed=2)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "num_images must be in [1, 256]" in err.value.details()


def test_the_cli_generates_and_translates_a_thousand_images(server, genserve, tmp_path):
    with GenserveClient(server.target, timeout=120) as client:
        want = client.generate(DCGAN, 1000, seed=5)
    out = tmp_path / "samples.npy"
    where = ("--server", server.target)
    run = genserve("generate", *where, "--model", DCGAN, "-n", "1000", "--seed", "5", "--out", str(out))
    assert run.returncode == 0, run.stderr
    got = np.load(out)
    assert got.shape[0] == 1000
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    translated = tmp_path / "translated.npy"
    run = genserve("translate", *where, "--model", PIX2PIX, "--in", str(out), "--out", str(translated))
    assert run.returncode == 0, run.stderr
    assert np.load(translated).shape[0] == 1000
