"""Shared fixtures: tiny real model folders (random-init networks, real ONNX export)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with ``ddpm-tiny`` (diffusion) and ``dcgan-tiny`` (sampler), built once per session."""
    import torch

    from genserve.export.onnx_export import export_model_folder
    from genserve.nets import save_checkpoint
    from genserve.nets.dcgan import DCGANConfig, Generator
    from genserve.nets.unet import UNet, UNetConfig

    root = tmp_path_factory.mktemp("tiny")
    checkpoints, models = root / "checkpoints", root / "models"
    torch.manual_seed(0)
    unet = UNet(UNetConfig(base_channels=16, groups=4))
    save_checkpoint(checkpoints / "ddpm", "unet", unet.eval(), unet.config)
    generator = Generator(DCGANConfig(gen_features=16))
    save_checkpoint(checkpoints / "dcgan", "dcgan_generator", generator.eval(), generator.config)
    export_model_folder(checkpoints / "ddpm", models / "ddpm-tiny", "ddpm-tiny")
    export_model_folder(checkpoints / "dcgan", models / "dcgan-tiny", "dcgan-tiny")
    return models
