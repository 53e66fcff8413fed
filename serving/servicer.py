"""The GenerationService servicer: proto -> domain, call the model's scheduler, domain -> proto.

It holds no status codes (``interceptors.register`` maps the domain errors it raises) and no
tensor math (``convert`` and the runners). It names each call's model and image count in the call's
record (``calls``), which the metrics and the access log read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import grpc

from genserve.serving import calls, convert
from genserve.serving.diffusion import DiffusionScheduler
from genserve.serving.pb import genserve_pb2_grpc
from genserve.serving.registry import ModelRegistry

log = logging.getLogger(__name__)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` time, for the schedulers; None = none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class GenerationServicer(genserve_pb2_grpc.GenerationServiceServicer):
    # The RPCs that run models (``Admission``).
    WORK_METHODS = ("Generate", "GenerateStream", "Translate", "LogLikelihood")

    def __init__(self, registry: ModelRegistry, executor: concurrent.futures.Executor):
        self._registry = registry
        self._executor = executor  # for response encoding (PNG), which is CPU work too

    async def ListModels(self, request, context: grpc.aio.ServicerContext):
        return convert.list_models_response(self._registry.infos())

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        deadline = _deadline(context)
        req, encoding = convert.generate_request_from_proto(request)
        scheduler = self._registry.scheduler(req.model)
        calls.name(req.model, req.num_images)
        images = await scheduler.submit(req, deadline)
        return await self._encode(req.model, images, encoding)

    async def Translate(self, request, context: grpc.aio.ServicerContext):
        deadline = _deadline(context)
        req, encoding = await self._decode_translate(request)
        scheduler = self._registry.scheduler(req.model)
        calls.name(req.model, req.num_images)
        images = await scheduler.submit(req, deadline)
        return await self._encode(req.model, images, encoding, convert.translate_response_to_proto)

    async def LogLikelihood(self, request, context: grpc.aio.ServicerContext):
        deadline = _deadline(context)
        if request.pngs:  # decoding PNGs is CPU work for a worker thread
            loop = asyncio.get_running_loop()
            req = await loop.run_in_executor(self._executor, convert.likelihood_request_from_proto, request)
        else:
            req = convert.likelihood_request_from_proto(request)
        scheduler = self._registry.likelihood_scheduler(req.model)
        calls.name(req.model, req.num_images)
        bits = await scheduler.submit(req, deadline)
        return convert.likelihood_response_to_proto(req.model, bits)

    async def _decode_translate(self, request):
        """The domain request. Decoding PNGs is CPU work for a worker thread, like encoding them."""
        if not request.pngs:
            return convert.translate_request_from_proto(request)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, convert.translate_request_from_proto, request)

    async def _encode(
        self, model: str, images, encoding: convert.ImageEncoding, to_proto=convert.generate_response_to_proto
    ):
        """The response message (``to_proto``: Generate's or Translate's). PNG encoding is CPU work for a
        worker thread; raw tensors are a copy of bytes, cheaper inline than the hop to a thread and back."""
        trace = calls.trace()
        started = time.time_ns() if trace is not None else 0
        if not encoding.png:
            response = to_proto(model, images, encoding)
        else:
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(self._executor, to_proto, model, images, encoding)
        if trace is not None:
            trace.add("serialize", started, time.time_ns(), png=encoding.png)
        return response

    async def GenerateStream(self, request, context: grpc.aio.ServicerContext):
        deadline = _deadline(context)
        req, encoding, preview_every = convert.generate_stream_request_from_proto(request)
        scheduler = self._registry.scheduler(req.model)
        calls.name(req.model, req.num_images)
        if isinstance(scheduler, DiffusionScheduler):
            async for event in scheduler.stream(req, deadline, preview_every):
                if event.images is None:
                    yield convert.progress_to_proto(event.step, event.total, event.preview)
                    continue
                result = await self._encode(req.model, event.images, encoding)
                yield convert.progress_to_proto(event.step, event.total, result=result)
        else:  # one pass: nothing to report before the images
            images = await scheduler.submit(req, deadline)
            yield convert.progress_to_proto(1, 1, result=await self._encode(req.model, images, encoding))
