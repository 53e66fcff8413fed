"""genserve installed as a package in fresh virtual environments outside the checkout, as a user
would: the base install serves the bundled models (found through GENSERVE_MODELS), and a client
install, with no torch, generates images against it with the real CLI.

Installing needs the package index (pip); where it cannot be reached the test skips saying so.
An install that fails for any other reason fails the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.servers import ServerProcess

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900


def pip(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )


@pytest.fixture(scope="module")
def installs(tmp_path_factory) -> dict[str, Path]:
    """Two fresh venvs: ``server`` (pip install <checkout>) and ``client`` (<checkout>[client])."""
    root = tmp_path_factory.mktemp("installs")
    venvs = {}
    for name, spec in (("server", str(REPO)), ("client", f"{REPO}[client]")):
        venv = root / name
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        if name == "server":  # can pip reach the index at all? (only that may skip)
            probe = pip(venv, "download", "--no-deps", "--dest", str(root / "probe"), "packaging", cwd=root)
            if probe.returncode != 0:
                pytest.skip(f"pip cannot reach the package index here: {probe.stderr.strip().splitlines()[-1:]}")
        run = pip(venv, "install", "--quiet", spec, cwd=root)
        assert run.returncode == 0, f"pip install {spec} failed:\n{run.stderr[-3000:]}"
        venvs[name] = venv
    return venvs


def test_the_installs_hold_no_torch(installs):
    for venv in installs.values():
        run = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
        assert run.returncode != 0 and "No module named 'torch'" in run.stderr


def test_an_installed_genserve_serves_the_checkouts_models_and_a_client_install_generates(installs, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GENSERVE_MODELS": str(REPO / "models")}
    server = ServerProcess(None, command=installs["server"] / "bin" / "genserve", cwd=tmp_path, env=env)
    try:
        server.wait_until_serving(timeout=120)
        assert "gRPC transport:" in server.log  # native when the wheel carries it, else grpcio and why
        client = installs["client"] / "bin" / "genserve"
        out = tmp_path / "digits.npy"
        args = ["generate", "--server", server.target, "--model", "dcgan-mnist", "-n", "300", "--seed", "1"]
        run = subprocess.run([str(client), *args, "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        images = np.load(out)
        assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and images.std() > 10
        listing = subprocess.run([str(client), "models", "--server", server.target], capture_output=True, text=True)
        assert "ddpm-mnist" in listing.stdout and "dcgan-mnist" in listing.stdout
    finally:
        server.stop()


def test_without_a_model_repository_the_installed_server_says_where_to_point_it(installs, tmp_path):
    server = ServerProcess(
        None, command=installs["server"] / "bin" / "genserve", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}
    )
    try:
        assert server.wait(60) != 0
        assert "pass --models DIR or set GENSERVE_MODELS" in server.log
    finally:
        server.stop()
