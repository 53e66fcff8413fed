"""The GenerationService servicer: proto -> domain, call the model's scheduler, domain -> proto.

It holds no status codes (``interceptors.ErrorInterceptor`` maps the domain errors it raises) and
no tensor math (``convert`` and the runners).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import grpc

from genserve.serving import convert
from genserve.serving.domain import ModelInfo
from genserve.serving.errors import NotFound, Unavailable
from genserve.serving.pb import genserve_pb2_grpc
from genserve.serving.runner import ModelRunner
from genserve.serving.scheduler import ModelScheduler, SerialScheduler

log = logging.getLogger(__name__)


class ModelRegistry:
    """The served models: their public description and their scheduler, by name."""

    def __init__(self) -> None:
        self.loaded = False  # True once every model of the repository is in
        self._infos: dict[str, ModelInfo] = {}
        self._schedulers: dict[str, ModelScheduler] = {}

    def add_runners(self, runners: dict[str, ModelRunner], executor: concurrent.futures.Executor) -> None:
        for name, runner in runners.items():
            self._infos[name] = ModelInfo.from_manifest(runner.manifest, runner.max_images)
            self._schedulers[name] = SerialScheduler(runner, executor)
        self.loaded = True

    def infos(self) -> list[ModelInfo]:
        return list(self._infos.values())

    def scheduler(self, model: str) -> ModelScheduler:
        try:
            return self._schedulers[model]
        except KeyError:
            if not self.loaded:
                raise Unavailable("the server is still loading its models; retry shortly") from None
            served = ", ".join(sorted(self._schedulers)) or "(none)"
            raise NotFound(f"no model named {model!r}; served models: {served}") from None


class GenerationServicer(genserve_pb2_grpc.GenerationServiceServicer):
    def __init__(self, registry: ModelRegistry, executor: concurrent.futures.Executor):
        self._registry = registry
        self._executor = executor  # for response encoding (PNG), which is CPU work too

    async def ListModels(self, request, context: grpc.aio.ServicerContext):
        return convert.list_models_response(self._registry.infos())

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        req, encoding = convert.generate_request_from_proto(request)
        images = await self._registry.scheduler(req.model).submit(req)
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(
            self._executor, convert.generate_response_to_proto, req.model, images, encoding
        )
        log.info(
            "Generate model=%s n=%d seed=%d steps=%s sampler=%s eta=%s encoding=%s seconds=%.3f",
            req.model,
            req.num_images,
            req.seed,
            req.steps,
            req.sampler.value if req.sampler else None,
            req.eta,
            encoding.value,
            time.perf_counter() - started,
        )
        return response
