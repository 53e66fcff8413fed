"""The KServe v2 / Open Inference Protocol gRPC API (``inference.GRPCInferenceService``), on the
same server and models as genserve's own API.

The service and messages are Triton's, from NVIDIA's own generated modules in the
``tritonclient`` package (nothing is vendored or generated here, see protos/README.md), so
Triton's client and other KServe v2 clients work against genserve unchanged. This module is the
KServe counterpart of ``servicer``: request message to domain requests, the model's scheduler,
images to response message. The tensor contract and every message conversion are
``kserve_contract`` (the counterpart of ``convert``, and the only module that imports the
generated messages); this module uses the generated service code only (the base class and its
registration). Like every servicer it raises domain errors and never sets a status code
(``interceptors.with_error_statuses`` maps them).

ModelInfer submits each row of a call as its own one-image request, concurrently, under the
call's gRPC deadline; the first row to fail cancels the others. ModelStreamInfer takes a stream
of ModelInferRequests and answers each with one ModelStreamInferResponse as soon as it is done
(so not always in request order; match them by ``id``); a failed request gets ``error_message``
and the stream goes on. ``kserve_stats`` says what ModelStatistics counts. The
repository-control, shared-memory, trace and log RPCs are not supported (UNIMPLEMENTED, the
generated base class's answer).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time

import grpc
import numpy as np
from google.protobuf import descriptor_pool

# NVIDIA's generated service code (importing it registers the protocol's messages and service in
# protobuf's default descriptor pool, which server reflection reads).
from tritonclient.grpc import service_pb2_grpc

from genserve.serving import calls
from genserve.serving import kserve_contract as contract
from genserve.serving.config import ServerConfig
from genserve.serving.domain import LikelihoodRequest, ModelInfo
from genserve.serving.errors import NotFound, ServingError
from genserve.serving.interceptors import Admission
from genserve.serving.kserve_stats import InferStats
from genserve.serving.metrics import Metrics
from genserve.serving.registry import ModelRegistry
from genserve.serving.scheduler import ModelScheduler

SERVICE_NAME = "inference.GRPCInferenceService"  # the protocol's service, as its .proto names it
SERVICE_DESCRIPTOR = descriptor_pool.Default().FindServiceByName(SERVICE_NAME)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 on genserve's registry: the RPCs of the module docstring; every other RPC is the
    generated base class's UNIMPLEMENTED."""

    WORK_METHODS = ("ModelInfer", "ModelStreamInfer")  # the RPCs that run models (``Admission``)

    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics, admission: Admission):
        self._registry = registry
        self._config = config
        self._metrics = metrics
        self._admission = admission  # closed while the server drains: not ready, no new requests
        self._stats: dict[str, InferStats] = {}

    def _infos(self) -> dict[str, ModelInfo]:
        return {info.name: info for info in self._registry.infos()}

    def _model(self, name: str, version: str) -> tuple[ModelInfo, ModelScheduler]:
        """The served model ``name`` at ``version`` ("" = the served one); NotFound or Unavailable."""
        scheduler = self._registry.scheduler(name)  # NotFound listing the served models; Unavailable while loading
        info = self._registry.info(name)
        if version not in ("", info.version):
            raise NotFound(f"model {name} has no version {version!r}; it serves version {info.version!r} only")
        return info, scheduler

    def _stats_of(self, model: str) -> InferStats:
        return self._stats.setdefault(model, InferStats())

    async def ServerLive(self, request, context: grpc.aio.ServicerContext):
        return contract.server_live_response()

    async def ServerReady(self, request, context: grpc.aio.ServicerContext):
        """Ready once every model is loaded, until the server starts draining."""
        return contract.server_ready_response(self._registry.loaded and self._admission.ready)

    async def ModelReady(self, request, context: grpc.aio.ServicerContext):
        """Triton's answer: false, not an error, for a model that is not served (yet) or another version."""
        info = self._infos().get(request.name)
        ready = (
            info is not None
            and self._registry.loaded
            and self._admission.ready
            and request.version in ("", info.version)
        )
        return contract.model_ready_response(ready)

    async def ServerMetadata(self, request, context: grpc.aio.ServicerContext):
        return contract.server_metadata_response(importlib.metadata.version("genserve"))

    async def ModelMetadata(self, request, context: grpc.aio.ServicerContext):
        info, _ = self._model(request.name, request.version)
        return contract.model_metadata_to_proto(info, self._config)

    async def ModelConfig(self, request, context: grpc.aio.ServicerContext):
        info, _ = self._model(request.name, request.version)
        return contract.model_config_response(info, self._config)

    async def RepositoryIndex(self, request, context: grpc.aio.ServicerContext):
        """Every served model is READY (genserve loads the whole repository before it serves)."""
        infos = sorted(self._infos().values(), key=lambda i: i.name)
        return contract.repository_index_response(infos)

    async def ModelStatistics(self, request, context: grpc.aio.ServicerContext):
        """One model's statistics, or every model's when no name is given."""
        if request.name:
            infos = [self._model(request.name, request.version)[0]]
        else:
            infos = sorted(self._infos().values(), key=lambda i: i.name)
        return contract.model_statistics_response(
            [
                contract.model_statistics_to_proto(i, self._stats_of(i.name), self._metrics.for_model(i.name).totals)
                for i in infos
            ]
        )

    async def ModelInfer(self, request, context: grpc.aio.ServicerContext):
        return await self._infer(request, _deadline(context))

    async def ModelStreamInfer(self, request_iterator, context: grpc.aio.ServicerContext):
        """Each request of the stream runs as it arrives; each answer is sent when it is done. A
        failed request is answered with its error_message and the stream goes on; closing the
        stream cancels what is still running."""
        deadline = _deadline(context)
        answers: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def answer(request) -> None:
            try:
                self._admission.check()  # the stream's later requests are refused while the server drains
                response = contract.stream_infer_response(await self._infer(request, deadline))
            except ServingError as exc:
                response = contract.stream_error_response(request, str(exc))
            await answers.put(response)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.ensure_future(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.wait(set(running))
            finally:  # also when reading fails (a message that does not parse): the stream ends with its error
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # raises what reading the stream raised
        finally:
            for task in (reader, *running):
                task.cancel()

    async def _infer(self, request, deadline: float | None):
        info, scheduler = self._model(request.model_name, request.model_version)
        calls.name(info.name, 0)
        stats = self._stats_of(info.name)
        started = stats.started()
        try:
            call = contract.infer_call_from_proto(request, info)
            calls.name(info.name, len(call.rows))
            if call.rows and isinstance(call.rows[0], LikelihoodRequest):
                scheduler = self._registry.likelihood_scheduler(info.name)
            images = await _gather([scheduler.submit(row, deadline) for row in call.rows])
        except BaseException:  # cancellations too: the call did not succeed
            stats.failed(started)
            raise
        stats.succeeded(started)
        trace = calls.trace()
        serialize_started = time.time_ns() if trace is not None else 0
        response = contract.infer_response_to_proto(request, info, images, call.outputs)
        if trace is not None:
            trace.add("serialize", serialize_started, time.time_ns())
        return response


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` on ``server`` (tritonclient's generated registration function)."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


async def _gather(submissions: list) -> np.ndarray:
    """Run the rows' submissions concurrently and stack their images in row order. On the first
    failure the other rows are cancelled, freeing their queue places and slots, and it is raised."""
    if len(submissions) == 1:  # the common case (perf_analyzer, one row per call): no task to make
        return await submissions[0]
    tasks = [asyncio.ensure_future(s) for s in submissions]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return np.concatenate(results)
