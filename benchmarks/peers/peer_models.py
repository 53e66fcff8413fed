"""The model work of every benchmark peer: genserve's own ``ModelRunner`` on the model folder's
``model.onnx``, so a peer does exactly the per-image work genserve does and only the serving layer
differs.

Imported by the peer servers (``triton_server.py``, ``ray_server.py``, ``torchserve_handler.py``),
each in its own environment under ``.bench/`` where genserve is installed (``setup.sh``). It needs
nothing but genserve: no peer framework, no protobuf.

- A one-pass sampler (``dcgan-mnist``): one ONNX Runtime call per batch, image 0 of each seed
  (``ModelRunner.sample_images``), as genserve's batcher runs it.
- A diffusion model (``ddpm-mnist``): the whole sampling loop per batch, request-level, rows
  grouped by step count (``ModelRunner.diffuse_images``): the same sampler math and noise as
  genserve's step-level scheduler, so the bytes match; a peer without step-level scheduling runs
  each batch to its last step.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from genserve.manifest import Manifest, discover
from genserve.serving.domain import GenerateRequest
from genserve.serving.runner import ModelRunner
from genserve.signature import ModelKind

MODELS = Path(__file__).resolve().parents[2] / "models"


class PeerModel:
    """One model folder behind a peer: seeds (and step counts) in, uint8 images (B, H, W, C) out."""

    def __init__(self, folder: Path, threads: int | None = None):
        # ONNX Runtime intra-op threads: genserve's default for one instance is one per core.
        self.runner = ModelRunner(folder, intra_op_threads=threads or os.cpu_count() or 1)
        manifest = self.runner.manifest
        self.name = self.runner.name
        self.diffusion = manifest.kind is ModelKind.DIFFUSION
        self.default_steps = manifest.diffusion.default_steps if self.diffusion else None
        c, h, w = manifest.image_shape
        self.image_shape = (h, w, c)

    def infer(self, seeds: np.ndarray, steps: np.ndarray | None = None) -> np.ndarray:
        """Image 0 of each seed: uint8 (B, H, W, C). ``steps`` (B,): diffusion step counts (None or
        0 = the model's default); ignored by a sampler."""
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)  # (B,)
        index = np.zeros(len(seeds), np.int64)
        if not self.diffusion:
            return self.runner.sample_images(seeds, index)
        steps = np.full(len(seeds), self.default_steps) if steps is None else np.asarray(steps).reshape(-1)
        steps = np.where(steps > 0, steps, self.default_steps)
        out = np.empty((len(seeds), *self.image_shape), np.uint8)  # (B, H, W, C)
        for k in np.unique(steps):  # one request-level loop per step count, its rows batched together
            rows = np.flatnonzero(steps == k)
            request = GenerateRequest(self.name, 1, steps=int(k))
            out[rows] = self.runner.diffuse_images(seeds[rows], index[rows], request)
        return out


def servable(folder: Path) -> bool:
    """What the peers serve: unconditional samplers and diffusion models (seed in, image out)."""
    manifest = Manifest.load(folder)
    if manifest.kind is ModelKind.DIFFUSION:
        return manifest.num_classes is None
    return manifest.kind is ModelKind.SAMPLER and manifest.num_classes is None


def servable_folders(models_dir: Path = MODELS, only: list[str] | None = None) -> list[Path]:
    """The servable model folders under ``models_dir`` (``only`` these names, when given)."""
    folders = [f for f in discover(models_dir) if (not only or f.name in only) and servable(f)]
    missing = set(only or ()) - {f.name for f in folders}
    if missing:
        raise ValueError(f"not servable by the peers (or not under {models_dir}): {sorted(missing)}")
    return folders


def load(models_dir: Path = MODELS, only: list[str] | None = None, threads: int | None = None) -> list[PeerModel]:
    """The servable models under ``models_dir`` (``only`` these names), loaded."""
    return [PeerModel(f, threads) for f in servable_folders(models_dir, only)]
