"""Which graph of a checkpoint a served model is: ``GRAPHS`` names each by (checkpoint family,
view). One checkpoint may hold several servable graphs (a VAE's decoder and its encoder ->
decoder reconstruction; a CycleGAN's two directions). ONNX export and the PyTorch serving
backend both cut the network here, so they serve the same computation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from genserve.nets.step import step_module
from genserve.nets.vae import VAEDecoder, VAEReconstruct
from genserve.signature import ModelKind

DEFAULT_VIEW = "default"

# (checkpoint family, view) -> the kind of graph and how to cut it from the network.
GRAPHS: dict[tuple[str, str], tuple[ModelKind, Callable[[torch.nn.Module], torch.nn.Module]]] = {
    ("unet", DEFAULT_VIEW): (ModelKind.DIFFUSION, step_module),
    ("dcgan_generator", DEFAULT_VIEW): (ModelKind.SAMPLER, lambda net: net),
    ("gaussian", DEFAULT_VIEW): (ModelKind.SAMPLER, lambda net: net),
    ("vae", DEFAULT_VIEW): (ModelKind.SAMPLER, VAEDecoder),
    ("vae", "reconstruct"): (ModelKind.TRANSLATOR, VAEReconstruct),
    ("cgan_generator", DEFAULT_VIEW): (ModelKind.SAMPLER, lambda net: net),
    ("unet_translator", DEFAULT_VIEW): (ModelKind.TRANSLATOR, lambda net: net),
    ("srresnet", DEFAULT_VIEW): (ModelKind.TRANSLATOR, lambda net: net),
    ("cyclegan", "a2b"): (ModelKind.TRANSLATOR, lambda net: net.g_ab),
    ("cyclegan", "b2a"): (ModelKind.TRANSLATOR, lambda net: net.g_ba),
}


def servable_module(net: torch.nn.Module, family: str, view: str = DEFAULT_VIEW) -> tuple[torch.nn.Module, ModelKind]:
    """The graph ``view`` of a checkpoint's network (eval mode), and its kind."""
    try:
        kind, cut = GRAPHS[(family, view)]
    except KeyError:
        raise ValueError(f"no export rule for checkpoint family {family!r}, view {view!r}") from None
    return cut(net).eval(), kind
