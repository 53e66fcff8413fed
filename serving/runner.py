"""ModelRunner: one served model = manifest + engine + the request logic of its kind.

``generate`` is synchronous and pure given the engine: the same request gives the same bytes.
Latents, random class labels and diffusion noise come from ``genserve.noise`` keyed by (seed,
image index, step), so an image never depends on how a request is split into engine batches;
a translated image depends only on its own input image.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genserve import images, noise, schedule
from genserve.manifest import DECODER_GRAPH, LIKELIHOOD_GRAPH, Manifest
from genserve.serving.config import Backend, EngineOptions
from genserve.serving.domain import GenerateRequest, LikelihoodRequest, Request, TranslateRequest
from genserve.serving.engines import Engine, create_engine, create_graph_engine
from genserve.serving.errors import Cancelled, InvalidArgument
from genserve.serving.slots import REPLAY_STEPS, SlotState, open_slots
from genserve.signature import ModelKind

MAX_IMAGES_PER_REQUEST = 256
MAX_FIRST_INDEX = 2**32 - 1  # the wire field is a uint32
MAX_GUIDANCE = 20.0  # beyond this classifier-free guidance only saturates images
TEMPERATURE_RANGE = (0.01, 10.0)  # (0 would be a division by zero for an autoregressive model)
TRUNCATION_RANGE = (0.0, 2.0)  # psi: 0 = the average image, 1 = none, above 1 = exaggerated
# The noise.slot_keys step of random class labels; no sampling step (0, 1, ...) collides with it.
LABEL_STEP = -1

Part = tuple[Request, int, int]  # units [start, stop) of a request: its images (or frames)

_CHANNELS = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class StepPlan:
    """A validated request of an iterative model: which timesteps (a diffusion model's noise levels,
    an autoregressive model's pixel positions), with which per-step coefficients."""

    sampler: schedule.Sampler | None  # diffusion only
    timesteps: np.ndarray  # (K,) int64
    coefs: np.ndarray  # (K, len(COEF_COLUMNS)) float32
    guidance: float | None = None  # guided models: the classifier-free guidance scale


class ModelRunner:
    """A model folder with ``instances`` engines that may run concurrently (separate sessions)."""

    def __init__(
        self,
        folder: Path,
        backend: Backend = Backend.ONNXRUNTIME,
        engine: Engine | None = None,
        instances: int = 1,
        intra_op_threads: int = 0,
        options: EngineOptions | None = None,
    ):
        self.folder = folder
        self.manifest = Manifest.load(folder)
        if engine is not None:
            self.engines = [engine]
        else:
            self.engines = [
                create_engine(folder, self.manifest, backend, intra_op_threads=intra_op_threads, options=options)
                for _ in range(instances)
            ]
        self.engine = self.engines[0]
        # More graphs of the folder (``Manifest.graphs``), one engine per instance each.
        self.graph_engines: dict[str, list[Engine]] = {
            name: [
                create_graph_engine(folder, self.manifest, name, backend, intra_op_threads, options)
                for _ in self.engines
            ]
            for name in self.manifest.graphs
        }
        self._idle_slots: list[list[SlotState]] = [[] for _ in self.engines]  # request-level states, reused
        if self.manifest.diffusion is not None:
            self.diffusion = self.manifest.diffusion.gaussian_diffusion()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def max_images(self) -> int:
        return MAX_IMAGES_PER_REQUEST

    @property
    def conditional(self) -> bool:
        """A class-conditional sampler or diffusion model: its graph takes a label per image."""
        return self.manifest.kind is not ModelKind.TRANSLATOR and self.manifest.num_classes is not None

    @property
    def likelihood(self) -> bool:
        """The model computes likelihoods of images (LogLikelihood): a flow."""
        return LIKELIHOOD_GRAPH in self.manifest.graphs

    def validate(self, request: Request) -> StepPlan | None:
        """Raise InvalidArgument naming what is allowed; return the step plan of an iterative model."""
        if isinstance(request, TranslateRequest):
            self._validate_translate(request)
            return None
        if isinstance(request, LikelihoodRequest):
            self._validate_likelihood(request)
            return None
        m = self.manifest
        self._check_count(request.num_images, "num_images")
        if m.kind is ModelKind.TRANSLATOR:
            raise InvalidArgument(f"{m.name} is a translator model: send it images with Translate, not Generate")
        self._validate_label(request.label)
        self._validate_interpolation(request)
        self._validate_style(request)
        temperature = self._temperature(request.temperature)
        if not 0 <= request.first_index <= MAX_FIRST_INDEX:
            raise InvalidArgument(f"first_index must be in [0, {MAX_FIRST_INDEX}], got {request.first_index}")
        guidance = self._guidance(request.guidance)
        if m.kind is ModelKind.AUTOREGRESSIVE:
            self._refuse_diffusion_fields(request)
            return self._autoregressive_plan(temperature, guidance)
        if m.kind is not ModelKind.DIFFUSION:
            self._refuse_diffusion_fields(request)
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
        return StepPlan(sampler, ts, coefs.astype(np.float32), guidance)

    def _refuse_diffusion_fields(self, request: GenerateRequest) -> None:
        m = self.manifest
        for field in ("steps", "sampler", "eta"):
            if getattr(request, field) is not None:
                raise InvalidArgument(f"{field} applies to diffusion models only; {m.name} is a {m.kind.value} model")

    def _autoregressive_plan(self, temperature: float, guidance: float | None) -> StepPlan:
        """Every pixel position in raster order, one per step; coefficient column 0 = 1 / temperature."""
        c, h, w = self.manifest.image_shape
        coefs = np.zeros((h * w, len(schedule.COEF_COLUMNS)), np.float32)
        coefs[:, 0] = 1.0 / temperature
        return StepPlan(None, np.arange(h * w, dtype=np.int64), coefs, guidance)

    def _temperature(self, temperature: float | None) -> float:
        """The request's sampling temperature (the model's default when unset); InvalidArgument
        for a model that takes none, or one out of range."""
        m = self.manifest
        if m.default_temperature is None:
            if temperature is not None:
                raise InvalidArgument(
                    f"temperature applies to autoregressive models and flows only; {m.name} takes none"
                )
            return 1.0
        if temperature is None:
            return float(m.default_temperature)
        low, high = TEMPERATURE_RANGE
        if not low <= temperature <= high:  # also rejects NaN
            raise InvalidArgument(f"temperature must be in [{low:g}, {high:g}], got {temperature}")
        return float(temperature)

    def _validate_style(self, request: GenerateRequest) -> None:
        m = self.manifest
        fields = {"truncation": request.truncation, "mix_seed": request.mix_seed, "mix_layer": request.mix_layer}
        if m.style_layers is None:
            for field, value in fields.items():
                if value is not None:
                    raise InvalidArgument(f"{field} applies to style-based models only; {m.name} is not one")
            return
        if request.truncation is not None:
            low, high = TRUNCATION_RANGE
            if not low <= request.truncation <= high:
                raise InvalidArgument(
                    f"truncation must be in [{low:g}, {high:g}] (1 = none, 0 = the average image), "
                    f"got {request.truncation}"
                )
        if request.mix_layer is not None:
            if request.mix_seed is None:
                raise InvalidArgument(
                    "mix_layer needs mix_seed: the seed whose styles the layers from mix_layer on take"
                )
            if not 0 <= request.mix_layer <= m.style_layers:
                raise InvalidArgument(
                    f"mix_layer must be in [0, {m.style_layers}] for model {m.name} (its synthesis layers; "
                    f"{m.style_layers} = no mixing), got {request.mix_layer}"
                )

    def _validate_likelihood(self, request: LikelihoodRequest) -> None:
        m = self.manifest
        if not self.likelihood:
            raise InvalidArgument(
                f"LogLikelihood takes models with a likelihood (normalizing flows); {m.name} has none"
            )
        self._check_images(request.images, m.image_shape)

    def _guidance(self, guidance: float | None) -> float | None:
        """The request's classifier-free guidance scale (the model's default when unset); None for a
        model that takes none (InvalidArgument if the request sets one), InvalidArgument out of range."""
        m = self.manifest
        if m.default_guidance is None:
            if guidance is not None:
                raise InvalidArgument(f"guidance applies to guided class-conditional models only; {m.name} is not one")
            return None
        if guidance is None:
            return float(m.default_guidance)
        if not 0.0 <= guidance <= MAX_GUIDANCE:  # also rejects NaN
            raise InvalidArgument(
                f"guidance must be in [0, {MAX_GUIDANCE:g}] (1 = the plain conditional model, 0 = unconditional), "
                f"got {guidance}"
            )
        return float(guidance)

    def _check_count(self, n: int, what: str) -> None:
        if not 1 <= n <= self.max_images:
            raise InvalidArgument(f"{what} must be in [1, {self.max_images}] for model {self.name}, got {n}")

    def _validate_label(self, label: int | None) -> None:
        m = self.manifest
        if label is None:
            return
        if not self.conditional:
            raise InvalidArgument(f"label applies to class-conditional models only; {m.name} is not one")
        if not 0 <= label < m.num_classes:
            raise InvalidArgument(f"label must be in [0, {m.num_classes}) for model {m.name}, got {label}")

    def _validate_interpolation(self, request: GenerateRequest) -> None:
        m = self.manifest
        if request.interpolate_to_seed is None:
            return
        if m.kind is not ModelKind.SAMPLER:
            raise InvalidArgument(
                f"interpolate_to_seed applies to latent samplers only; {m.name} is a {m.kind.value} model"
            )
        if request.first_index:
            raise InvalidArgument(
                "first_index must be 0 with interpolate_to_seed: a frame depends on the number of frames, "
                "so an interpolation is not split"
            )
        if request.num_images < 2:
            raise InvalidArgument(
                f"an interpolation needs num_images >= 2 frames (both ends included), got {request.num_images}"
            )

    def _validate_translate(self, request: TranslateRequest) -> None:
        m = self.manifest
        if m.kind is not ModelKind.TRANSLATOR:
            raise InvalidArgument(
                f"Translate takes translator models; {m.name} is a {m.kind.value} model (use Generate)"
            )
        self._check_images(request.images, m.input_shape)

    def _check_images(self, images: Sequence[np.ndarray], shape: tuple[int, int, int]) -> None:
        """Between 1 and ``max_images`` images, each (H, W, C) of ``shape`` (C, H, W); else
        InvalidArgument naming the first one that is not, by its index."""
        self._check_count(len(images), "the number of images")
        c, h, w = shape
        for i, image in enumerate(images):
            if image.shape != (h, w, c):
                raise InvalidArgument(
                    f"expected {w}x{h} {_channels(c)} images for {self.name}, got {_describe(image)} at index {i}"
                )

    def generate(self, request: Request, cancelled: threading.Event | None = None, instance: int = 0) -> np.ndarray:
        """Run a request to completion: uint8 images (N, H, W, C).

        Once ``cancelled`` is set, raise Cancelled before the next engine call (engine calls cannot
        be interrupted, but a cancelled request need not hold its model for the remaining steps)."""
        return images.to_uint8(self.generate_float(request, cancelled, instance))

    def generate_float(
        self, request: Request, cancelled: threading.Event | None = None, instance: int = 0
    ) -> np.ndarray:
        """The model's raw output in [-1, 1] (unclipped for diffusion), float32 (N, C, H, W)."""
        plan = self.validate(request)
        engine = self.engines[instance]
        out = []
        for start in range(0, request.num_images, engine.max_batch_size):
            _stop_if(cancelled)
            stop = min(start + engine.max_batch_size, request.num_images)
            if plan is None:
                out.append(self._run_once(engine, [(request, start, stop)]))
            else:
                index = np.asarray(request.indices(start, stop), dtype=np.int64)
                seeds = np.full(len(index), request.seed, dtype=np.int64)
                out.append(self._diffuse(instance, seeds, index, plan, cancelled, request.label))
        return np.concatenate(out)

    def run_images(self, parts: Sequence[Part], instance: int = 0) -> np.ndarray:
        """One engine call of a one-pass model on units [start, stop) of several validated requests:
        uint8 (B, H, W, C), rows in the order of ``parts``.

        The batcher mixes images of several requests in one call; each image depends only on its
        own request and index, so the mix never shows in the results."""
        engine = self.engines[instance]
        if hasattr(engine, "run_uint8"):  # a device engine converts where its output is
            return engine.run_uint8(self._batch_feeds(parts))
        return images.to_uint8(self._run_once(engine, parts))

    def sample_images(
        self,
        seeds: np.ndarray,
        index: np.ndarray,
        instance: int = 0,
        labels: np.ndarray | None = None,
        request: GenerateRequest | None = None,
    ) -> np.ndarray:
        """One engine call of a sampler on independent images: image ``index[i]`` of seed ``seeds[i]``,
        uint8 (B, H, W, C) (what the engine-scaling benchmark times), with ``request``'s options
        (temperature, truncation, mixing; None = the defaults) and, for a class-conditional
        sampler, class ``labels[i]`` (evaluation)."""
        feeds = self._sample_feeds(seeds, index, request)
        if labels is not None:
            feeds["label"] = np.asarray(labels, dtype=np.int64)
        return images.to_uint8(next(iter(self.engines[instance].run(feeds).values())))

    def diffuse_images(
        self,
        seeds: np.ndarray,
        index: np.ndarray,
        request: GenerateRequest,
        instance: int = 0,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """A diffusion model's images ``index[i]`` of seeds ``seeds[i]``, all with ``request``'s
        schedule (and class and guidance), run to the end together (request-level batching, as a
        server without step-level scheduling runs them: the Triton peer of the benchmarks): uint8
        (B, H, W, C). ``labels`` gives a conditional model a class per image instead (evaluation)."""
        plan = self.validate(request)
        return images.to_uint8(self._diffuse(instance, seeds, index, plan, label=request.label, labels=labels))

    def _run_once(self, engine: Engine, parts: Sequence[Part]) -> np.ndarray:
        return next(iter(engine.run(self._batch_feeds(parts)).values()))

    def _batch_feeds(self, parts: Sequence[Part]) -> dict[str, np.ndarray]:
        feeds = [self._feeds(request, start, stop) for request, start, stop in parts]
        return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}

    def _feeds(self, request: Request, start: int, stop: int) -> dict[str, np.ndarray]:
        """The graph inputs of units [start, stop) of one request."""
        if isinstance(request, TranslateRequest):
            return {"source": images.from_uint8(np.stack(request.images[start:stop]))}  # (k, C, h, w)
        if isinstance(request, LikelihoodRequest):
            return {"image": images.from_uint8(np.stack(request.images[start:stop]))}  # (k, C, H, W)
        if request.interpolate_to_seed is not None:
            return self._interpolation_feeds(request, np.arange(start, stop))  # frames: first_index is 0
        index = np.asarray(request.indices(start, stop), dtype=np.int64)
        return self._sample_feeds(np.full(len(index), request.seed, dtype=np.int64), index, request)

    def _sample_feeds(
        self, seeds: np.ndarray, index: np.ndarray, request: GenerateRequest | None = None
    ) -> dict[str, np.ndarray]:
        """Latent z (and class label, and a style model's inputs) of image ``index[i]`` of seed
        ``seeds[i]``, with ``request``'s options (None: the model's defaults): its ``label`` for
        every image, or (None) a class per image drawn from its (seed, index)."""
        n = len(index)
        z = noise.gaussian(seeds, index, np.full(n, noise.INITIAL_STEP), (self.manifest.latent_dim,))
        feeds = {"z": self._scaled(z, request)}
        if self.conditional:
            feeds["label"] = self.labels(seeds, index, request.label if request else None)
        if self.manifest.style_layers is not None:
            mix_seed = request.mix_seed if request else None
            mix_z = (
                z
                if mix_seed is None
                else noise.gaussian(
                    np.full(n, mix_seed), index, np.full(n, noise.INITIAL_STEP), (self.manifest.latent_dim,)
                )
            )
            feeds.update(self._style_feeds(n, request, mix_z))
        return feeds

    def _scaled(self, z: np.ndarray, request: GenerateRequest | None) -> np.ndarray:
        """A flow's latent at the request's temperature (z is multiplied by it); others' as drawn."""
        if self.manifest.default_temperature is None:
            return z
        temperature = self._temperature(request.temperature if request else None)
        return z if temperature == 1.0 else (z * np.float32(temperature)).astype(np.float32)

    def _style_feeds(self, n: int, request: GenerateRequest | None, mix_z: np.ndarray) -> dict[str, np.ndarray]:
        """A style model's truncation psi, second latent and first mixed layer per image (no mixing:
        the layer count, which no layer reaches)."""
        m = self.manifest
        psi = 1.0 if request is None or request.truncation is None else request.truncation
        layer = m.style_layers if request is None or request.mix_layer is None else request.mix_layer
        if request is not None and request.mix_seed is not None and request.mix_layer is None:
            layer = m.style_layers // 2  # a mix seed alone: its styles from the middle layer on
        return {
            "psi": np.full(n, psi, dtype=np.float32),
            "mix_z": mix_z.astype(np.float32),
            "mix_layer": np.full(n, layer, dtype=np.int64),
        }

    def labels(self, seeds: np.ndarray, index: np.ndarray, label: int | None) -> np.ndarray:
        """The class of image ``index[i]`` of seed ``seeds[i]`` of a conditional model, int64: ``label``
        for every image, or (None) one drawn from the image's own (seed, index)."""
        if label is not None:
            return np.full(len(index), label, dtype=np.int64)
        keys = noise.slot_keys(seeds, index, np.full(len(index), LABEL_STEP))
        return (keys % np.uint64(self.manifest.num_classes)).astype(np.int64)

    def _interpolation_feeds(self, request: GenerateRequest, index: np.ndarray) -> dict[str, np.ndarray]:
        """Frames ``index`` of the slerp from image 0 of ``seed`` to image 0 of ``interpolate_to_seed``,
        all with the class of the first (the requested one, or image 0 of ``seed``'s)."""
        ends = np.array([request.seed, request.interpolate_to_seed], dtype=np.int64)
        end_feeds = self._sample_feeds(ends, np.zeros(2, dtype=np.int64), request)
        z_a, z_b = end_feeds["z"]
        feeds = {"z": slerp(z_a, z_b, index / (request.num_images - 1))}  # (k, latent_dim)
        if self.conditional:
            feeds["label"] = np.full(len(index), end_feeds["label"][0], dtype=np.int64)
        if self.manifest.style_layers is not None:
            mix_z = np.repeat(end_feeds["mix_z"][:1], len(index), axis=0)  # the first end's mixing styles
            feeds.update(self._style_feeds(len(index), request, mix_z))
        return feeds

    def open_slots(self, instance: int = 0, capacity: int | None = None) -> SlotState:
        """A new slot state on engine ``instance`` for this iterative model (``slots``); a latent
        model's slots finish through its decoder graph."""
        engine = self.engines[instance]
        m = self.manifest
        max_steps = m.diffusion.num_timesteps if m.diffusion else m.image_shape[1] * m.image_shape[2]
        decoders = self.graph_engines.get(DECODER_GRAPH)
        return open_slots(
            engine, capacity or engine.max_batch_size, max_steps, decoders[instance] if decoders else None
        )

    def run_likelihood(self, parts: Sequence[Part], instance: int = 0) -> np.ndarray:
        """One likelihood-graph call on images [start, stop) of several validated LogLikelihood
        requests: bits per dimension, float32 (B,), rows in the order of ``parts``."""
        engine = self.graph_engines[LIKELIHOOD_GRAPH][instance]
        return next(iter(engine.run(self._batch_feeds(parts)).values())).astype(np.float32)

    def _diffuse(
        self,
        instance: int,
        seeds: np.ndarray,
        index: np.ndarray,
        plan: StepPlan,
        cancelled: threading.Event | None = None,
        label: int | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """Images ``index[i]`` of seeds ``seeds[i]`` through every step of ``plan`` (a conditional
        model: of class ``label``, or ``labels[i]``), float32 (B, C, H, W): the request-level loop,
        on the same slot state as the step scheduler, ``REPLAY_STEPS`` steps per call."""
        n = len(index)
        conditioning = self.step_conditioning(seeds, index, plan, label, labels)
        idle = self._idle_slots[instance]
        state = idle.pop() if idle else self.open_slots(instance)  # one per concurrent call
        try:
            state.join(0, seeds, index, plan.timesteps, plan.coefs, conditioning)
            steps = len(plan.timesteps)
            for done in range(0, steps, REPLAY_STEPS):
                _stop_if(cancelled)
                state.step(n, min(REPLAY_STEPS, steps - done))
            return state.values(range(n))
        finally:
            idle.append(state)

    def step_conditioning(
        self,
        seeds: np.ndarray,
        index: np.ndarray,
        plan: StepPlan,
        label: int | None = None,
        labels: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The step graph's per-slot inputs beyond x, t, coef and noise: for a conditional model the
        class of each image (``labels``, else ``self.labels(seeds, index, label)``) and, for a
        guided model, the plan's guidance; none for another model."""
        if not self.conditional:
            return {}
        if labels is None:
            labels = self.labels(seeds, index, label)
        conditioning = {"label": labels}
        if plan.guidance is not None:
            conditioning["guidance"] = np.full(len(index), plan.guidance, dtype=np.float32)
        return conditioning


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985) from latent ``a`` (t = 0) to ``b`` (t = 1), float32
    (len(t), D). Latent walks use it rather than a straight line (White 2016, "Sampling generative
    networks"): a line between two Gaussian latents passes through norms the prior almost never
    draws. The ends are ``a`` and ``b`` themselves, so the end frames are the seeds' own images."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    t = np.asarray(t, dtype=np.float64)[:, None]  # (F, 1)
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    theta = np.arccos(np.clip(np.dot(a64, b64) / norms, -1.0, 1.0)) if norms > 0 else 0.0
    if np.sin(theta) < 1e-6:  # a zero or (anti)parallel latent: no unique arc, so the line
        path = (1.0 - t) * a64 + t * b64
    else:
        path = (np.sin((1.0 - t) * theta) * a64 + np.sin(t * theta) * b64) / np.sin(theta)
    return np.where(t == 0.0, a64, np.where(t == 1.0, b64, path)).astype(np.float32)


def _channels(c: int) -> str:
    return _CHANNELS.get(c, f"{c}-channel")


def _describe(image: np.ndarray) -> str:
    """``32x32 RGB`` for a uint8 (H, W, C) image."""
    h, w, c = image.shape
    return f"{w}x{h} {_channels(c)}"


def _stop_if(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise Cancelled("the request was cancelled")
