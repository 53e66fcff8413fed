"""Which graph of a checkpoint a served model is: ``GRAPHS`` names each by (checkpoint family,
view). One checkpoint may hold several servable graphs (a VAE's decoder and its encoder ->
decoder reconstruction; a CycleGAN's two directions). ONNX export and the PyTorch serving
backend both cut the network here, so they serve the same computation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from genserve.nets.flow import FlowLikelihood, FlowSampler, sampler_latent_dim
from genserve.nets.latent_diffusion import LatentDecode, LatentDiffusionStep
from genserve.nets.pixelcnn import PixelCNNStep
from genserve.nets.step import step_module
from genserve.nets.vae import VAEDecoder, VAEReconstruct
from genserve.signature import (
    ModelKind,
    Signature,
    autoregressive_step_signature,
    decoder_signature,
    diffusion_step_signature,
    latent_sampler_signature,
    likelihood_signature,
    style_sampler_signature,
)

DEFAULT_VIEW = "default"


def _whole(net: torch.nn.Module) -> torch.nn.Module:
    return net


class Graph(NamedTuple):
    """One servable graph of a checkpoint family: its kind, how to cut it from the network, and
    (for the newer families) its signature from the checkpoint's config dict. Without one, export
    derives the signature from the kind (``onnx_export.graph_signature``)."""

    kind: ModelKind
    cut: Callable[[torch.nn.Module], torch.nn.Module] = _whole
    signature: Callable[[dict[str, Any]], Signature] | None = None


# (checkpoint family, view) -> the graph.
GRAPHS: dict[tuple[str, str], Graph] = {
    ("unet", DEFAULT_VIEW): Graph(ModelKind.DIFFUSION, step_module),
    ("dcgan_generator", DEFAULT_VIEW): Graph(ModelKind.SAMPLER),
    ("gaussian", DEFAULT_VIEW): Graph(ModelKind.SAMPLER),
    ("vae", DEFAULT_VIEW): Graph(ModelKind.SAMPLER, VAEDecoder),
    ("vae", "reconstruct"): Graph(ModelKind.TRANSLATOR, VAEReconstruct),
    ("cgan_generator", DEFAULT_VIEW): Graph(ModelKind.SAMPLER),
    ("unet_translator", DEFAULT_VIEW): Graph(ModelKind.TRANSLATOR),
    ("srresnet", DEFAULT_VIEW): Graph(ModelKind.TRANSLATOR),
    ("cyclegan", "a2b"): Graph(ModelKind.TRANSLATOR, lambda net: net.g_ab),
    ("cyclegan", "b2a"): Graph(ModelKind.TRANSLATOR, lambda net: net.g_ba),
    ("pixelcnn", DEFAULT_VIEW): Graph(
        ModelKind.AUTOREGRESSIVE,
        PixelCNNStep,
        signature=lambda cfg: autoregressive_step_signature(
            (cfg["image_channels"], cfg["image_size"], cfg["image_size"]),
            cfg.get("num_classes"),
            cfg.get("guided", False),
        ),
    ),
    ("latent_diffusion", DEFAULT_VIEW): Graph(
        ModelKind.DIFFUSION,
        LatentDiffusionStep,
        signature=lambda cfg: diffusion_step_signature((cfg["latent_dim"],)),
    ),
    ("latent_diffusion", "decode"): Graph(
        ModelKind.SAMPLER,
        LatentDecode,
        signature=lambda cfg: decoder_signature(
            cfg["latent_dim"], (cfg["image_channels"], cfg["image_size"], cfg["image_size"])
        ),
    ),
    ("stylegan_generator", DEFAULT_VIEW): Graph(
        ModelKind.SAMPLER,
        signature=lambda cfg: style_sampler_signature(
            cfg["latent_dim"], (cfg["image_channels"], cfg["image_size"], cfg["image_size"])
        ),
    ),
    ("flow", DEFAULT_VIEW): Graph(
        ModelKind.SAMPLER,
        FlowSampler,
        signature=lambda cfg: latent_sampler_signature(
            sampler_latent_dim(cfg["image_channels"], cfg["image_size"], cfg.get("top_mixture", 0)),
            (cfg["image_channels"], cfg["image_size"], cfg["image_size"]),
        ),
    ),
    ("flow", "likelihood"): Graph(  # the kind of an extra graph is not used
        ModelKind.SAMPLER,
        FlowLikelihood,
        signature=lambda cfg: likelihood_signature((cfg["image_channels"], cfg["image_size"], cfg["image_size"])),
    ),
}


def graph_of(family: str, view: str = DEFAULT_VIEW) -> Graph:
    try:
        return GRAPHS[(family, view)]
    except KeyError:
        raise ValueError(f"no export rule for checkpoint family {family!r}, view {view!r}") from None


def servable_module(net: torch.nn.Module, family: str, view: str = DEFAULT_VIEW) -> tuple[torch.nn.Module, ModelKind]:
    """The graph ``view`` of a checkpoint's network (eval mode), and its kind."""
    graph = graph_of(family, view)
    return graph.cut(net).eval(), graph.kind
