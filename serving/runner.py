"""ModelRunner: one served model = manifest + engine + the request logic of its kind.

``generate`` is synchronous and pure given the engine: the same request gives the same bytes.
Latents and diffusion noise come from ``genserve.noise`` keyed by (seed, image index, step),
so an image never depends on how a request is split into engine batches.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genserve import images, noise, schedule
from genserve.manifest import Manifest, discover
from genserve.serving.config import ModelSettings
from genserve.serving.domain import GenerateRequest
from genserve.serving.engines import Backend, Engine, create_engine
from genserve.serving.errors import Cancelled, InvalidArgument
from genserve.signature import ModelKind

log = logging.getLogger(__name__)

MAX_IMAGES_PER_REQUEST = 256


@dataclass(frozen=True)
class DiffusionPlan:
    """A validated diffusion request: which timesteps, with which per-step coefficients."""

    sampler: schedule.Sampler
    timesteps: np.ndarray  # (K,) int64
    coefs: np.ndarray  # (K, len(COEF_COLUMNS)) float32


class ModelRunner:
    """A model folder with ``instances`` engines that may run concurrently (separate sessions)."""

    def __init__(
        self,
        folder: Path,
        backend: Backend = Backend.ONNXRUNTIME,
        engine: Engine | None = None,
        instances: int = 1,
        intra_op_threads: int = 0,
    ):
        self.folder = folder
        self.manifest = Manifest.load(folder)
        if engine is not None:
            self.engines = [engine]
        else:
            self.engines = [
                create_engine(folder, self.manifest, backend, intra_op_threads=intra_op_threads)
                for _ in range(instances)
            ]
        self.engine = self.engines[0]
        if self.manifest.diffusion is not None:
            self.diffusion = self.manifest.diffusion.gaussian_diffusion()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def max_images(self) -> int:
        return MAX_IMAGES_PER_REQUEST

    def validate(self, request: GenerateRequest) -> DiffusionPlan | None:
        """Raise InvalidArgument naming what is allowed; return the diffusion plan if any."""
        m = self.manifest
        if not 1 <= request.num_images <= self.max_images:
            raise InvalidArgument(
                f"num_images must be in [1, {self.max_images}] for model {m.name}, got {request.num_images}"
            )
        if m.kind is not ModelKind.DIFFUSION:
            for field in ("steps", "sampler", "eta"):
                if getattr(request, field) is not None:
                    raise InvalidArgument(
                        f"{field} applies to diffusion models only; {m.name} is a {m.kind.value} model"
                    )
            return None
        spec = m.diffusion
        steps = spec.default_steps if request.steps is None else request.steps
        if not 1 <= steps <= spec.num_timesteps:
            raise InvalidArgument(f"steps must be in [1, {spec.num_timesteps}] for model {m.name}, got {steps}")
        sampler = request.sampler
        if sampler is None:  # the paper's sampler on the full schedule, DDIM (eta = 0) on a strided one
            sampler = schedule.Sampler.DDPM if steps == spec.num_timesteps else schedule.Sampler.DDIM
        if request.eta is not None and sampler is not schedule.Sampler.DDIM:
            raise InvalidArgument(f"eta applies to the DDIM sampler only, not {sampler.value}")
        eta = 0.0 if request.eta is None else request.eta
        if not 0.0 <= eta <= 1.0:
            raise InvalidArgument(f"eta must be in [0, 1], got {eta}")
        ts, coefs = schedule.step_coefficients(
            self.diffusion, steps, sampler, eta=eta, variance=request.variance, clip_denoised=request.clip_denoised
        )
        return DiffusionPlan(sampler, ts, coefs.astype(np.float32))

    def generate(
        self, request: GenerateRequest, cancelled: threading.Event | None = None, instance: int = 0
    ) -> np.ndarray:
        """Run a request to completion: uint8 images (N, H, W, C).

        Once ``cancelled`` is set, raise Cancelled before the next engine call (engine calls cannot
        be interrupted, but a cancelled request need not hold its model for the remaining steps)."""
        return images.to_uint8(self.generate_float(request, cancelled, instance))

    def generate_float(
        self, request: GenerateRequest, cancelled: threading.Event | None = None, instance: int = 0
    ) -> np.ndarray:
        """The model's raw output in [-1, 1] (unclipped for diffusion), float32 (N, C, H, W)."""
        plan = self.validate(request)
        engine = self.engines[instance]
        out = []
        for start in range(0, request.num_images, engine.max_batch_size):
            _stop_if(cancelled)
            index = np.arange(start, min(start + engine.max_batch_size, request.num_images))
            seeds = np.full(len(index), request.seed, dtype=np.int64)
            if plan is None:
                out.append(self._sample(engine, seeds, index))
            else:
                out.append(self._diffuse(engine, seeds, index, plan, cancelled))
        return np.concatenate(out)

    def sample_images(self, seeds: np.ndarray, index: np.ndarray, instance: int = 0) -> np.ndarray:
        """One engine batch of a one-pass sampler: image ``index[i]`` of seed ``seeds[i]``, uint8 (B, H, W, C).

        The batcher mixes images of several requests in one call; each image depends only on its
        own (seed, index), so the mix never shows in the results."""
        return images.to_uint8(self._sample(self.engines[instance], seeds, index))

    def _sample(self, engine: Engine, seeds: np.ndarray, index: np.ndarray) -> np.ndarray:
        z = noise.gaussian(seeds, index, np.full(len(index), noise.INITIAL_STEP), (self.manifest.latent_dim,))
        return next(iter(engine.run({"z": z}).values()))

    def _diffuse(
        self,
        engine: Engine,
        seeds: np.ndarray,
        index: np.ndarray,
        plan: DiffusionPlan,
        cancelled: threading.Event | None = None,
    ) -> np.ndarray:
        shape = self.manifest.image_shape
        n = len(index)
        x = noise.gaussian(seeds, index, np.full(n, noise.INITIAL_STEP), shape)
        t = np.empty(n, dtype=np.int64)
        for k, (timestep, coef) in enumerate(zip(plan.timesteps, plan.coefs, strict=True)):
            _stop_if(cancelled)
            t.fill(timestep)
            z = noise.gaussian(seeds, index, np.full(n, k + 1), shape)
            feeds = {"x": x, "t": t, "coef": np.broadcast_to(coef, (n, len(coef))).copy(), "noise": z}
            x = engine.run(feeds)["x_prev"]
        return x


def _stop_if(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise Cancelled("the request was cancelled")


def load_repository(
    models_dir: Path,
    backend: Backend = Backend.ONNXRUNTIME,
    settings: Callable[[str], ModelSettings] | None = None,
) -> dict[str, ModelRunner]:
    """Every model folder under ``models_dir``, loaded with its settings (engine instances and
    threads); fails on the first broken folder."""
    runners = {}
    for folder in discover(models_dir):
        manifest = Manifest.load(folder)
        s = settings(manifest.name) if settings else ModelSettings()
        # A diffusion model runs one step-level batch, on one engine, whatever `instances` says.
        instances = 1 if manifest.kind is ModelKind.DIFFUSION else s.instances
        threads = s.intra_op_threads or max(1, (os.cpu_count() or 1) // instances)
        runner = ModelRunner(folder, backend, instances=instances, intra_op_threads=threads)
        if runner.name in runners:
            raise ValueError(f"two model folders declare the name {runner.name!r}")
        runners[runner.name] = runner
        log.info(
            "loaded %s (%s) from %s: %d engine instance(s), %d thread(s) each",
            runner.name,
            runner.manifest.kind.value,
            folder,
            instances,
            threads,
        )
    return runners
