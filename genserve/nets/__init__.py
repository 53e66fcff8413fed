"""Network definitions shared by training, export and the PyTorch serving backend.

Each family has one dataclass config; a checkpoint stores that config as JSON next to its
safetensors weights, so any consumer rebuilds the network with ``build(family, config)``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genserve.nets.cgan import CGANConfig, CGANGenerator
from genserve.nets.classifier import Classifier, ClassifierConfig
from genserve.nets.cyclegan import CycleGAN, CycleGANConfig
from genserve.nets.dcgan import DCGANConfig, Discriminator, Generator
from genserve.nets.flow import Flow, FlowConfig
from genserve.nets.gaussian import GaussianConfig, GaussianModel
from genserve.nets.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from genserve.nets.pix2pix import UNetGenerator, UNetTranslatorConfig
from genserve.nets.pixelcnn import PixelCNN, PixelCNNConfig
from genserve.nets.stylegan import StyleGANConfig, StyleGANGenerator
from genserve.nets.superres import SRResNet, SRResNetConfig
from genserve.nets.unet import UNet, UNetConfig
from genserve.nets.vae import VAE, VAEConfig

FAMILIES: dict[str, tuple[type, type]] = {
    "unet": (UNet, UNetConfig),
    "dcgan_generator": (Generator, DCGANConfig),
    "dcgan_discriminator": (Discriminator, DCGANConfig),
    "classifier": (Classifier, ClassifierConfig),
    "gaussian": (GaussianModel, GaussianConfig),
    "vae": (VAE, VAEConfig),
    "cgan_generator": (CGANGenerator, CGANConfig),
    "unet_translator": (UNetGenerator, UNetTranslatorConfig),
    "srresnet": (SRResNet, SRResNetConfig),
    "cyclegan": (CycleGAN, CycleGANConfig),
    "pixelcnn": (PixelCNN, PixelCNNConfig),
    "latent_diffusion": (LatentDiffusion, LatentDiffusionConfig),
    "stylegan_generator": (StyleGANGenerator, StyleGANConfig),
    "flow": (Flow, FlowConfig),
}


def config_from_dict(family: str, values: dict[str, Any]):
    config_cls = FAMILIES[family][1]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{family} config has unknown keys {unknown}")
    # JSON has no tuples; restore them where the dataclass default is a tuple.
    coerced = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_cls(**coerced)


def build(family: str, config) -> torch.nn.Module:
    return FAMILIES[family][0](config)


def save_checkpoint(folder: Path, family: str, model: torch.nn.Module, config, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (family + config + extra) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    meta = {"family": family, "config": dataclasses.asdict(config), **(extra or {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_checkpoint(folder: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network stored in ``folder`` (eval mode) and return it with its metadata."""
    meta = json.loads((folder / "config.json").read_text())
    model = build(meta["family"], config_from_dict(meta["family"], meta["config"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), meta
