"""The client verbs of the ``genserve`` command against a real server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from tests.integration.servers import GENSERVE


def generate(genserve, server, out: Path, *args: str) -> subprocess.CompletedProcess:
    return genserve("generate", "--server", server.target, "--out", str(out), *args)


def test_models_prints_one_line_per_model_starting_with_its_name(genserve, server):
    result = genserve("models", "--server", server.target)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert names == ["cgan-tiny", "dcgan-tiny", "ddpm-cond-tiny", "ddpm-tiny", "pix2pix-tiny", "superres-tiny"]


def test_generate_to_png_writes_one_grid_image(genserve, server, tmp_path: Path):
    out = tmp_path / "grid.png"
    result = generate(genserve, server, out, "--model", "ddpm-tiny", "-n", "4", "--seed", "1", "--steps", "3")
    assert result.returncode == 0, result.stderr
    with Image.open(out) as grid:
        assert grid.mode == "L"
        assert grid.size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)  # 2 x 2 tiles with 2-pixel padding


def test_generate_to_npy_writes_uint8_n_h_w_for_one_channel_images(genserve, server, tmp_path: Path):
    out = tmp_path / "images.npy"
    result = generate(genserve, server, out, "--model", "dcgan-tiny", "-n", "3", "--seed", "2")
    assert result.returncode == 0, result.stderr
    images = np.load(out)
    assert images.dtype == np.uint8
    assert images.shape == (3, 28, 28)


def test_generate_to_a_folder_writes_one_png_per_image_with_the_served_pixels(genserve, server, tmp_path: Path):
    out_dir, npy = tmp_path / "pngs", tmp_path / "same.npy"
    args = ("--model", "ddpm-tiny", "-n", "3", "--seed", "9", "--steps", "4", "--sampler", "ddim", "--eta", "0.5")
    assert generate(genserve, server, out_dir, *args).returncode == 0
    assert generate(genserve, server, npy, *args).returncode == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["000.png", "001.png", "002.png"]
    expected = np.load(npy)
    for i in range(3):
        with Image.open(out_dir / f"{i:03d}.png") as png:
            np.testing.assert_array_equal(np.asarray(png), expected[i])


def test_generate_with_an_unknown_model_prints_not_found_and_fails(genserve, server, tmp_path: Path):
    result = generate(genserve, server, tmp_path / "x.png", "--model", "no-such-model")
    assert result.returncode == 1
    assert result.stderr.startswith("NOT_FOUND: ")
    assert "ddpm-tiny" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_generate_with_an_invalid_request_prints_invalid_argument_and_fails(genserve, server, tmp_path: Path):
    result = generate(genserve, server, tmp_path / "x.npy", "--model", "dcgan-tiny", "-n", "0")
    assert result.returncode == 1
    assert result.stderr.startswith("INVALID_ARGUMENT: num_images must be in [1, 256]")


def test_models_without_a_server_prints_unavailable_and_fails(genserve):
    result = genserve("models", "--server", "127.0.0.1:1", "--timeout", "5")
    assert result.returncode == 1
    assert result.stderr.startswith("UNAVAILABLE: ")


def test_a_reader_that_leaves_early_gets_no_traceback(server):
    """`genserve models | head -1`: the pipe's reader is gone before the command writes."""
    proc = subprocess.Popen(
        [str(GENSERVE), "models", "--server", server.target], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # before the command has even imported: its first write meets a closed pipe
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert proc.returncode == 128 + 13  # as a shell reports a writer ended by SIGPIPE
