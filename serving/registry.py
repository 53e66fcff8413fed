"""The served models: discovery, loading and lookup, in one place.

``load_repository`` finds the model folders of a repository (``manifest.discover``, the on-disk
model-folder contract) and loads each into a ``ModelRunner`` with its settings; ``ModelRegistry``
holds the loaded models by name, with their public description and their scheduler, for both
APIs' servicers. No other serving code reads the repository folder.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from genserve.manifest import LIKELIHOOD_GRAPH, Manifest, discover
from genserve.serving.config import Backend, EngineOptions, ModelSettings, Precision, ServerConfig
from genserve.serving.diffusion import DiffusionScheduler
from genserve.serving.domain import ModelInfo
from genserve.serving.errors import InvalidArgument, NotFound, Unavailable
from genserve.serving.metrics import Metrics
from genserve.serving.runner import ModelRunner
from genserve.serving.scheduler import ImageBatchScheduler, ModelScheduler

log = logging.getLogger(__name__)


def load_repository(
    models_dir: Path,
    backend: Backend = Backend.ONNXRUNTIME,
    settings: Callable[[str], ModelSettings] | None = None,
    options: EngineOptions | None = None,
) -> dict[str, ModelRunner]:
    """Every model folder under ``models_dir``, loaded with its settings (engine instances, threads,
    precision) and the server's engine ``options``; fails on the first broken folder."""
    runners = {}
    options = options or EngineOptions()
    for folder in discover(models_dir):
        manifest = Manifest.load(folder)
        s = settings(manifest.name) if settings else ModelSettings()
        # An iterative model runs one step-level batch, on one engine, whatever `instances` says.
        instances = 1 if manifest.kind.iterative else s.instances
        threads = s.intra_op_threads or max(1, (os.cpu_count() or 1) // instances)
        own = options if s.precision is None else dataclasses.replace(options, precision=Precision(s.precision))
        runner = ModelRunner(folder, backend, instances=instances, intra_op_threads=threads, options=own)
        if runner.name in runners:
            raise ValueError(f"two model folders declare the name {runner.name!r}")
        runners[runner.name] = runner
        log.info(
            "loaded %s (%s) from %s: %d %s engine instance(s), %s, %d thread(s) each",
            runner.name,
            runner.manifest.kind.value,
            folder,
            instances,
            backend.value,
            own.precision.value,
            threads,
        )
    return runners


class LikelihoodGraph:
    """A flow's likelihood graph as a one-pass runner for ``ImageBatchScheduler``: a unit is one
    image, its result one float (bits per dimension)."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.name = runner.name
        self.engines = runner.graph_engines[LIKELIHOOD_GRAPH]

    def validate(self, request) -> None:
        self.runner.validate(request)

    def run_images(self, parts, instance: int = 0):
        return self.runner.run_likelihood(parts, instance)


class ModelRegistry:
    """The served models: their public description and their scheduler, by name."""

    def __init__(self) -> None:
        self.loaded = False  # True once every model of the repository is in
        self._infos: dict[str, ModelInfo] = {}
        self._schedulers: dict[str, ModelScheduler] = {}
        self._likelihood: dict[str, ModelScheduler] = {}  # models with a likelihood graph (flows)

    def add_runners(
        self,
        runners: dict[str, ModelRunner],
        config: ServerConfig,
        executor: concurrent.futures.Executor,
        metrics: Metrics,
    ) -> None:
        for name, runner in runners.items():
            self._infos[name] = ModelInfo.from_manifest(runner.manifest, runner.max_images)
            kind = DiffusionScheduler if runner.manifest.kind.iterative else ImageBatchScheduler
            settings = config.settings_for(name)
            self._schedulers[name] = kind(runner, settings, executor, metrics.for_model(name))
            if runner.likelihood:  # its own batcher on its own graph, with the model's queue settings
                self._likelihood[name] = ImageBatchScheduler(
                    LikelihoodGraph(runner), settings, executor, metrics.for_model(f"{name}:likelihood")
                )
        self.loaded = True

    def infos(self) -> list[ModelInfo]:
        return list(self._infos.values())

    def info(self, model: str) -> ModelInfo:
        """The served model ``model`` (NotFound listing the served ones; Unavailable while loading)."""
        self.scheduler(model)
        return self._infos[model]

    def schedulers(self) -> dict[str, ModelScheduler]:
        return {**self._schedulers, **{f"{name}/likelihood": s for name, s in self._likelihood.items()}}

    def likelihood_scheduler(self, model: str) -> ModelScheduler:
        """The LogLikelihood scheduler of ``model`` (NotFound / Unavailable as ``scheduler``;
        InvalidArgument for a model without a likelihood)."""
        self.scheduler(model)
        try:
            return self._likelihood[model]
        except KeyError:
            with_one = ", ".join(sorted(self._likelihood)) or "(none)"
            raise InvalidArgument(
                f"model {model} has no likelihood; LogLikelihood takes normalizing flows: {with_one}"
            ) from None

    def scheduler(self, model: str) -> ModelScheduler:
        try:
            return self._schedulers[model]
        except KeyError:
            if not self.loaded:
                raise Unavailable("the server is still loading its models; retry shortly") from None
            served = ", ".join(sorted(self._schedulers)) or "(none)"
            raise NotFound(f"no model named {model!r}; served models: {served}") from None
