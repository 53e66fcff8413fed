"""A synchronous Python client for a genserve server.

    with GenserveClient("127.0.0.1:50051", timeout=60) as client:
        client.wait_until_serving(timeout=30)
        images = client.generate("ddpm-mnist", 16, seed=1, steps=50)  # uint8 (16, 28, 28, 1)
        digits = client.translate("pix2pix-edges2mnist", edges)  # uint8 (N, 28, 28) or PNG files in

Failed calls raise ``grpc.RpcError`` unchanged: ``err.code()`` is the status (NOT_FOUND,
INVALID_ARGUMENT, ...) and ``err.details()`` the server's explanation.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc
import numpy as np
from grpc_health.v1 import health_pb2_grpc

from genserve.channel import Credentials, open_channel
from genserve.schedule import Sampler
from genserve.serving import convert
from genserve.serving.domain import GenerateRequest, ModelInfo
from genserve.serving.pb import genserve_pb2_grpc

__all__ = ["Credentials", "GenserveClient", "ModelInfo", "Sampler", "StreamEvent"]

MAX_IN_FLIGHT = 4  # requests of one split call in flight at once: enough to keep a model's batches full


@dataclass(frozen=True)
class StreamEvent:
    """One message of ``generate_stream``: steps done of ``total``, previews, and on the last the images."""

    step: int
    total: int
    previews: list[np.ndarray]  # uint8 (h, w, C) each, when asked for
    images: np.ndarray | None  # uint8 (N, H, W, C) on the last event


class GenserveClient:
    """One channel to one server. ``timeout`` is every call's deadline in seconds (None: no deadline)."""

    def __init__(self, target: str, timeout: float | None = None, credentials: Credentials | None = None):
        """``credentials``: TLS, a client certificate and a bearer token (``genserve.channel``);
        calls refused with UNAVAILABLE (a draining or lost replica) are retried."""
        self.target = target
        self.timeout = timeout
        self._channel = open_channel(target, credentials)
        self._stub = genserve_pb2_grpc.GenerationServiceStub(self._channel)
        self._limits: dict[str, int] = {}  # images per request, by model (ListModels)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> GenserveClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def list_models(self) -> list[ModelInfo]:
        """The served models, sorted by name."""
        response = self._stub.ListModels(convert.list_models_request(), timeout=self.timeout)
        return convert.model_infos_from_response(response)

    def generate(
        self,
        model: str,
        num_images: int,
        seed: int = 0,
        steps: int | None = None,
        sampler: Sampler | str | None = None,
        eta: float | None = None,
        priority: int = 0,
        timeout_ms: int | None = None,
        label: int | None = None,
        interpolate_to_seed: int | None = None,
        guidance: float | None = None,
        first_index: int = 0,
        progress: Callable[[int], object] | None = None,
        temperature: float | None = None,
        truncation: float | None = None,
        mix_seed: int | None = None,
        mix_layer: int | None = None,
    ) -> np.ndarray:
        """Generate ``num_images`` images: uint8 (N, H, W, C), decoded from the raw tensors.

        ``priority``: queue level, 1 first (0 = the model's default); ``timeout_ms``: the server
        gives up on the request (DEADLINE_EXCEEDED) this long after its arrival; ``label``: the class
        of every image (class-conditional models; default a class per image from the seed);
        ``interpolate_to_seed``: ``num_images`` frames from image 0 of ``seed`` to image 0 of this seed;
        ``guidance``: the classifier-free guidance scale (guided class-conditional models);
        ``first_index``: image i is the seed's image ``first_index + i``; ``temperature``
        (autoregressive models and flows), ``truncation``, ``mix_seed`` and ``mix_layer`` (style-based
        models): see the proto's GenerateRequest.

        Any ``num_images``: more than the model takes per request are sent as several requests
        (``first_index`` set so the images are the same), a few at a time, and put back in order;
        ``progress(k)`` is called as each request's ``k`` images arrive."""
        request = _request(
            model, num_images, seed, steps, sampler, eta, priority, timeout_ms, label, interpolate_to_seed, guidance
        )
        request = dataclasses.replace(
            request,
            first_index=first_index,
            temperature=temperature,
            truncation=truncation,
            mix_seed=mix_seed,
            mix_layer=mix_layer,
        )
        responses = self._generate_split(request, convert.ImageEncoding.RAW, progress)
        return np.concatenate([convert.images_from_response(r) for r in responses])

    def generate_png(
        self,
        model: str,
        num_images: int,
        seed: int = 0,
        steps: int | None = None,
        sampler: Sampler | str | None = None,
        eta: float | None = None,
        priority: int = 0,
        timeout_ms: int | None = None,
        label: int | None = None,
        interpolate_to_seed: int | None = None,
        guidance: float | None = None,
        first_index: int = 0,
        progress: Callable[[int], object] | None = None,
        temperature: float | None = None,
        truncation: float | None = None,
        mix_seed: int | None = None,
        mix_layer: int | None = None,
    ) -> list[bytes]:
        """Like ``generate``, but the images come back as PNG files (bytes), one per image."""
        request = _request(
            model, num_images, seed, steps, sampler, eta, priority, timeout_ms, label, interpolate_to_seed, guidance
        )
        request = dataclasses.replace(
            request,
            first_index=first_index,
            temperature=temperature,
            truncation=truncation,
            mix_seed=mix_seed,
            mix_layer=mix_layer,
        )
        responses = self._generate_split(request, convert.ImageEncoding.PNG, progress)
        return [png for r in responses for png in convert.pngs_from_response(r)]

    def _generate_split(
        self, request: GenerateRequest, encoding: convert.ImageEncoding, progress: Callable[[int], object] | None
    ) -> list:
        """The responses of ``request`` sent as requests within the model's limit, in order. An
        interpolation is sent whole (its frames depend on their count): the server says if it is too long."""
        splittable = request.interpolate_to_seed is None
        parts = self._parts(request.model, request.num_images) if splittable else [(0, request.num_images)]
        messages = [
            convert.generate_request_to_proto(
                dataclasses.replace(request, num_images=stop - start, first_index=request.first_index + start), encoding
            )
            for start, stop in parts
        ]
        return self._in_order(self._stub.Generate, messages, progress)

    def translate(
        self,
        model: str,
        images: np.ndarray | Sequence[bytes],
        priority: int = 0,
        timeout_ms: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """Translate images with a translator model: uint8 (N, H, W, C) out, one per input image.

        ``images``: a uint8 array (N, H, W) or (N, H, W, C), sent as raw tensors, or PNG files
        (bytes), sent as they are; each must have the model's ``ModelInfo.input_shape``. Any number
        of images: more than the model takes per request go as several requests, as in ``generate``
        (a translated image depends only on its own input)."""
        responses = self._translate(model, images, convert.ImageEncoding.RAW, priority, timeout_ms, progress)
        return np.concatenate([convert.images_from_response(r) for r in responses])

    def translate_png(
        self,
        model: str,
        images: np.ndarray | Sequence[bytes],
        priority: int = 0,
        timeout_ms: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> list[bytes]:
        """Like ``translate``, but the images come back as PNG files (bytes), one per image."""
        responses = self._translate(model, images, convert.ImageEncoding.PNG, priority, timeout_ms, progress)
        return [png for r in responses for png in convert.pngs_from_response(r)]

    def _translate(
        self,
        model: str,
        images: np.ndarray | Sequence[bytes],
        encoding: convert.ImageEncoding,
        priority: int,
        timeout_ms: int | None,
        progress: Callable[[int], object] | None,
    ) -> list:
        raw = isinstance(images, np.ndarray)
        messages = [
            convert.translate_request_to_proto(
                model,
                raw=images[start:stop] if raw else None,
                pngs=() if raw else images[start:stop],
                encoding=encoding,
                priority=priority,
                timeout=None if timeout_ms is None else timeout_ms / 1000.0,
            )
            for start, stop in self._parts(model, len(images))
        ]
        return self._in_order(self._stub.Translate, messages, progress)

    def log_likelihood(
        self,
        model: str,
        images: np.ndarray,
        priority: int = 0,
        timeout_ms: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """Bits per dimension of each image under ``model`` (a model with ``ModelInfo.likelihood``):
        float32 (N,). ``images``: uint8 (N, H, W) or (N, H, W, C) of the model's image shape; any
        number, split into requests within the model's limit as ``translate`` does."""
        messages = [
            convert.likelihood_request_to_proto(
                model, images[start:stop], priority, None if timeout_ms is None else timeout_ms / 1000.0
            )
            for start, stop in self._parts(model, len(images))
        ]
        responses = self._in_order(self._stub.LogLikelihood, messages, None)
        if progress is not None:
            progress(len(images))
        return np.concatenate([convert.bits_per_dim_from_response(r) for r in responses])

    def _parts(self, model: str, n: int) -> list[tuple[int, int]]:
        """[start, stop) ranges of ``n`` images within the model's per-request limit. The limit is
        asked once per model (ListModels); an unknown model goes whole, for the server to name."""
        if n > 1 and model not in self._limits:
            self._limits.update({m.name: m.max_images for m in self.list_models()})
        limit = self._limits.get(model) or max(n, 1)
        parts = max(1, -(-n // limit))  # as few requests as fit, of near-equal sizes: 1000 by 256 = 4 x 250
        bounds = [n * i // parts for i in range(parts + 1)]
        return list(itertools.pairwise(bounds))

    def _in_order(self, method, messages: list, progress: Callable[[int], object] | None) -> list:
        """The responses of ``method`` to ``messages``, sent at most ``MAX_IN_FLIGHT`` at a time, in
        order; ``progress`` gets each response's image count. The first failure is raised."""
        responses: list = []
        pending: list = []
        try:
            for msg in messages:
                pending.append(method.future(msg, timeout=self.timeout))
                if len(pending) == MAX_IN_FLIGHT:
                    responses.append(self._collect(pending.pop(0), progress))
            while pending:
                responses.append(self._collect(pending.pop(0), progress))
        finally:
            for future in pending:
                future.cancel()
        return responses

    @staticmethod
    def _collect(future, progress: Callable[[int], object] | None):
        response = future.result()
        if progress is not None:
            progress(convert.image_count(response))
        return response

    def generate_stream(
        self,
        model: str,
        num_images: int,
        seed: int = 0,
        steps: int | None = None,
        sampler: Sampler | str | None = None,
        eta: float | None = None,
        preview_every: int = 0,
        label: int | None = None,
        interpolate_to_seed: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        truncation: float | None = None,
        mix_seed: int | None = None,
        mix_layer: int | None = None,
    ) -> Iterator[StreamEvent]:
        """Progress of a generation as it runs; the last event carries the images (uint8 (N, H, W, C)).
        Closing the iterator early cancels the call, and the server stops the work within a step."""
        request = _request(
            model,
            num_images,
            seed,
            steps,
            sampler,
            eta,
            label=label,
            interpolate_to_seed=interpolate_to_seed,
            guidance=guidance,
        )
        request = dataclasses.replace(
            request, temperature=temperature, truncation=truncation, mix_seed=mix_seed, mix_layer=mix_layer
        )
        msg = convert.generate_stream_request_to_proto(request, convert.ImageEncoding.RAW, preview_every)
        call = self._stub.GenerateStream(msg, timeout=self.timeout)
        try:
            for progress in call:
                step, total, previews, result = convert.progress_from_proto(progress)
                images = None if result is None else convert.images_from_response(result)
                yield StreamEvent(step, total, previews, images)
        finally:
            call.cancel()

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status of ``service`` ("" = the whole server): "SERVING", "NOT_SERVING", ..."""
        response = self._health.Check(convert.health_check_request(service), timeout=self.timeout)
        return convert.health_status_name(response)

    def wait_until_serving(self, timeout: float, service: str = "") -> None:
        """Block until the server reports SERVING (it may not be listening yet); TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            updates = self._health.Watch(convert.health_check_request(service), timeout=remaining, wait_for_ready=True)
            try:
                for update in updates:
                    if convert.health_status_name(update) == "SERVING":
                        return
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            finally:
                updates.cancel()
        raise TimeoutError(f"{self.target} did not report SERVING within {timeout:g} s")


def _request(
    model: str,
    num_images: int,
    seed: int,
    steps: int | None,
    sampler: Sampler | str | None,
    eta: float | None,
    priority: int = 0,
    timeout_ms: int | None = None,
    label: int | None = None,
    interpolate_to_seed: int | None = None,
    guidance: float | None = None,
) -> GenerateRequest:
    """The domain request of the client's keyword arguments (a sampler may be given by name)."""
    return GenerateRequest(
        model=model,
        num_images=num_images,
        seed=seed,
        steps=steps,
        sampler=Sampler(sampler) if isinstance(sampler, str) else sampler,
        eta=eta,
        priority=priority,
        timeout=None if timeout_ms is None else timeout_ms / 1000.0,
        label=label,
        interpolate_to_seed=interpolate_to_seed,
        guidance=guidance,
    )
