"""The GenerationService servicer: proto -> domain, call the model's scheduler, domain -> proto.

It holds no status codes (``interceptors.with_error_statuses`` maps the domain errors it raises) and
no tensor math (``convert`` and the runners). It counts each call's outcome for the metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from genserve.serving import convert
from genserve.serving.diffusion import DiffusionScheduler
from genserve.serving.errors import status_name
from genserve.serving.metrics import UNKNOWN_MODEL, Metrics
from genserve.serving.pb import genserve_pb2_grpc
from genserve.serving.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class _Call:
    """One Generate/GenerateStream/Translate call as the metrics see it."""

    deadline: float | None  # time.monotonic() time, or None
    model: str = UNKNOWN_MODEL  # until the request names a served model
    started: float = field(default_factory=time.perf_counter)


class GenerationServicer(genserve_pb2_grpc.GenerationServiceServicer):
    WORK_METHODS = ("Generate", "GenerateStream", "Translate")  # the RPCs that run models (``Admission``)

    def __init__(self, registry: ModelRegistry, executor: concurrent.futures.Executor, metrics: Metrics):
        self._registry = registry
        self._executor = executor  # for response encoding (PNG), which is CPU work too
        self._metrics = metrics

    async def ListModels(self, request, context: grpc.aio.ServicerContext):
        return convert.list_models_response(self._registry.infos())

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        with self._outcome(context) as call:
            req, encoding = convert.generate_request_from_proto(request)
            scheduler = self._registry.scheduler(req.model)
            call.model = req.model
            images = await scheduler.submit(req, call.deadline)
            response = await self._encode(req.model, images, encoding)
        seconds = time.perf_counter() - call.started
        log.debug("Generate model=%s n=%d seed=%d seconds=%.4f", req.model, req.num_images, req.seed, seconds)
        return response

    async def Translate(self, request, context: grpc.aio.ServicerContext):
        with self._outcome(context) as call:
            req, encoding = await self._decode_translate(request)
            scheduler = self._registry.scheduler(req.model)
            call.model = req.model
            images = await scheduler.submit(req, call.deadline)
            response = await self._encode(req.model, images, encoding, convert.translate_response_to_proto)
        seconds = time.perf_counter() - call.started
        log.debug("Translate model=%s n=%d seconds=%.4f", req.model, req.num_images, seconds)
        return response

    async def _decode_translate(self, request):
        """The domain request. Decoding PNGs is CPU work for a worker thread, like encoding them."""
        if not request.pngs:
            return convert.translate_request_from_proto(request)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, convert.translate_request_from_proto, request)

    @contextlib.contextmanager
    def _outcome(self, context: grpc.aio.ServicerContext) -> Iterator[_Call]:
        """The call's deadline (``time.monotonic()``) for the schedulers, and its outcome for the
        metrics: the status code it ends with, and its duration when it succeeds."""
        remaining = context.time_remaining()
        call = _Call(deadline=None if remaining is None else time.monotonic() + remaining)
        code = "OK"
        try:
            yield call
        except (asyncio.CancelledError, GeneratorExit):  # the client left, or the gRPC deadline passed
            expired = call.deadline is not None and time.monotonic() >= call.deadline
            code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        except Exception as exc:
            code = status_name(exc)
            raise
        finally:
            self._metrics.count_request(call.model, code)
        self._metrics.for_model(call.model).request_seconds.observe(time.perf_counter() - call.started)

    async def _encode(
        self, model: str, images, encoding: convert.ImageEncoding, to_proto=convert.generate_response_to_proto
    ):
        """The response message (``to_proto``: Generate's or Translate's). PNG encoding is CPU work for a
        worker thread; raw tensors are a copy of bytes, cheaper inline than the hop to a thread and back."""
        if not encoding.png:
            return to_proto(model, images, encoding)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, to_proto, model, images, encoding)

    async def GenerateStream(self, request, context: grpc.aio.ServicerContext):
        with self._outcome(context) as call:
            req, encoding, preview_every = convert.generate_stream_request_from_proto(request)
            scheduler = self._registry.scheduler(req.model)
            call.model = req.model
            if isinstance(scheduler, DiffusionScheduler):
                async for event in scheduler.stream(req, call.deadline, preview_every):
                    if event.images is None:
                        yield convert.progress_to_proto(event.step, event.total, event.preview)
                        continue
                    result = await self._encode(req.model, event.images, encoding)
                    yield convert.progress_to_proto(event.step, event.total, result=result)
            else:  # one pass: nothing to report before the images
                images = await scheduler.submit(req, call.deadline)
                yield convert.progress_to_proto(1, 1, result=await self._encode(req.model, images, encoding))
