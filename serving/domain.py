"""Requests and results as the serving core sees them: no protobuf, no gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genserve.manifest import LIKELIHOOD_GRAPH, Manifest
from genserve.schedule import Sampler, VarianceType
from genserve.signature import ModelKind


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    num_images: int
    seed: int = 0
    steps: int | None = None  # diffusion only; None = the model's default
    sampler: Sampler | None = None  # diffusion only; None = the model's default
    eta: float | None = None  # DDIM only; None = 0.0
    variance: VarianceType = VarianceType.FIXED_SMALL  # DDPM only
    clip_denoised: bool = True  # clip x̂₀ to [-1, 1] as Ho et al.'s code does; False = Algorithm 2 verbatim
    priority: int = 0  # queue priority level, 1 = first; 0 = the model's default
    timeout: float | None = None  # seconds from arrival; the request fails DEADLINE_EXCEEDED after it
    label: int | None = None  # class-conditional models only; None = a class per image from (seed, index)
    interpolate_to_seed: int | None = None  # samplers only: num_images frames from seed's to this seed's latent
    guidance: float | None = None  # guided class-conditional models only; None = the model's default
    first_index: int = 0  # image i of the request is image first_index + i of the seed
    temperature: float | None = None  # autoregressive models and flows only; None = the model's default
    truncation: float | None = None  # style-based models only: psi; None = 1 (no truncation)
    mix_seed: int | None = None  # style-based models only: the seed whose styles the later layers take
    mix_layer: int | None = None  # style-based models only: the first layer with mix_seed's styles

    def indices(self, start: int, stop: int):
        """The seed's image indices of the request's images [start, stop)."""
        return range(self.first_index + start, self.first_index + stop)


@dataclass(frozen=True, eq=False)
class TranslateRequest:
    """Images for a translator model, each uint8 (H, W, C) as the client sent it (sizes are checked
    against the model by the runner, so a wrong one can be named by its index)."""

    model: str
    images: tuple[np.ndarray, ...]
    priority: int = 0  # as GenerateRequest
    timeout: float | None = None  # as GenerateRequest

    @property
    def num_images(self) -> int:
        return len(self.images)


@dataclass(frozen=True, eq=False)
class LikelihoodRequest:
    """Images whose likelihood a model with one (a flow) computes, each uint8 (H, W, C)."""

    model: str
    images: tuple[np.ndarray, ...]
    priority: int = 0  # as GenerateRequest
    timeout: float | None = None  # as GenerateRequest

    @property
    def num_images(self) -> int:
        return len(self.images)


Request = GenerateRequest | TranslateRequest | LikelihoodRequest  # what a one-pass scheduler and runner take


@dataclass(frozen=True)
class GenerateResult:
    model: str
    images: np.ndarray  # uint8 (N, H, W, C)


@dataclass(frozen=True)
class ModelInfo:
    """What a client may know about a served model (ListModels)."""

    name: str
    kind: ModelKind
    version: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    max_images: int  # most images per request; the least is 1
    num_timesteps: int | None = None  # diffusion only
    default_steps: int | None = None  # diffusion only
    default_sampler: Sampler | None = None  # diffusion only, on the full schedule
    default_guidance: float | None = None  # guided class-conditional models only
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    dataset: str = ""
    num_classes: int | None = None  # class-conditional models: labels 0 .. num_classes - 1
    latent_dim: int | None = None  # samplers only
    input_shape: tuple[int, int, int] | None = None  # translators only: (C, H, W) of each input image
    input_description: str = ""  # translators only: how an input image is made
    default_temperature: float | None = None  # models that take a sampling temperature
    style_layers: int | None = None  # style-based models: mix_layer is in [0, style_layers]
    likelihood: bool = False  # LogLikelihood works on this model
    num_steps: int | None = None  # autoregressive models: steps (pixels) per image

    @property
    def request_fields(self) -> tuple[str, ...]:
        """The GenerateRequest (or Translate / LogLikelihood) fields this model takes beyond the
        model name, image count, priority and timeout: what ``genserve models`` lists."""
        if self.kind is ModelKind.TRANSLATOR:
            return ("images",)
        fields = ["seed", "first_index"]
        if self.num_classes is not None:
            fields.append("label")
        if self.kind is ModelKind.DIFFUSION:
            fields += ["steps", "sampler", "eta"]
        if self.default_guidance is not None:
            fields.append("guidance")
        if self.kind is ModelKind.SAMPLER:
            fields.append("interpolate_to_seed")
        if self.default_temperature is not None:
            fields.append("temperature")
        if self.style_layers is not None:
            fields += ["truncation", "mix_seed", "mix_layer"]
        return tuple(fields)

    @classmethod
    def from_manifest(cls, manifest: Manifest, max_images: int) -> ModelInfo:
        spec = manifest.diffusion
        return cls(
            name=manifest.name,
            kind=manifest.kind,
            version=manifest.version,
            image_shape=manifest.image_shape,
            max_images=max_images,
            num_timesteps=spec.num_timesteps if spec else None,
            default_steps=spec.default_steps if spec else None,
            default_sampler=Sampler(spec.default_sampler) if spec else None,
            default_guidance=manifest.default_guidance,
            metrics=dict(manifest.metrics),
            description=manifest.description,
            dataset=manifest.dataset,
            num_classes=manifest.num_classes,
            latent_dim=manifest.latent_dim,
            input_shape=manifest.input_shape,
            input_description=manifest.input_description,
            default_temperature=manifest.default_temperature,
            style_layers=manifest.style_layers,
            likelihood=LIKELIHOOD_GRAPH in manifest.graphs,
            num_steps=manifest.image_shape[1] * manifest.image_shape[2]
            if manifest.kind is ModelKind.AUTOREGRESSIVE
            else None,
        )
