"""Shared fixtures: tiny real model folders (random-init networks, real ONNX export)."""

from __future__ import annotations

from pathlib import Path

import pytest

CGAN, PIX2PIX, SUPERRES, DDPM_COND = "cgan-tiny", "pix2pix-tiny", "superres-tiny", "ddpm-cond-tiny"
NUM_CLASSES, LATENT_DIM = 10, 8
INPUT_DESCRIPTIONS = {
    PIX2PIX: "any 28x28 grayscale image (a random-init test network)",
    SUPERRES: "a 28x28 digit averaged over 4x4 blocks to 7x7 (a random-init test network)",
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository built once per session: ``ddpm-tiny`` (diffusion), ``ddpm-cond-tiny``
    (class-conditional diffusion with guidance), ``dcgan-tiny`` (sampler) from the real export
    path, and ``cgan-tiny`` (class-conditional sampler), ``pix2pix-tiny`` (28x28 -> 28x28
    translator) and ``superres-tiny`` (7x7 -> 28x28 translator) from small networks defined here,
    exported with the same ONNX export and parity check, with manifests of their kinds."""
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
    cond = UNet(UNetConfig(base_channels=16, groups=4, num_classes=NUM_CLASSES))
    with torch.no_grad():  # the zero-initialised layers too, so that labels and guidance show
        for p in cond.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    save_checkpoint(checkpoints / "ddpm-cond", "unet", cond.eval(), cond.config)
    export_model_folder(checkpoints / "ddpm-cond", models / DDPM_COND, DDPM_COND)
    export_model_folder(checkpoints / "dcgan", models / "dcgan-tiny", "dcgan-tiny")
    _export_family_models(models)
    return models


def _export_family_models(models: Path) -> None:
    """The class-conditional sampler and the two translators, as the model-folder contract has them."""
    import torch
    from torch import nn

    from genserve import signature as sig
    from genserve.export.onnx_export import check_parity, export_onnx
    from genserve.manifest import ONNX_FILE, Manifest, sha256

    class ConditionalSampler(nn.Module):
        """(z, label) -> image: the label's embedding joins z, then two upsampling convolutions."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(NUM_CLASSES, LATENT_DIM)
            self.project = nn.Linear(2 * LATENT_DIM, 8 * 7 * 7)
            self.up = nn.Sequential(
                nn.ConvTranspose2d(8, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Tanh()
            )

        def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            h = self.project(torch.cat([z, self.embed(label)], dim=1))  # (B, 392)
            return self.up(h.view(-1, 8, 7, 7))  # (B, 1, 28, 28)

    class Translator(nn.Module):
        """source -> image; the export names graph inputs after forward's arguments."""

        def __init__(self, *layers: nn.Module) -> None:
            super().__init__()
            self.net = nn.Sequential(*layers, nn.Tanh())

        def forward(self, source: torch.Tensor) -> torch.Tensor:
            return self.net(source)

    translator = Translator(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    superres = Translator(nn.ConvTranspose2d(1, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, 2, 1))  # 7 -> 28
    image = (1, 28, 28)
    torch.manual_seed(1)
    families = [
        (CGAN, ConditionalSampler(), sig.latent_sampler_signature(LATENT_DIM, image, NUM_CLASSES), {}),
        (PIX2PIX, translator, sig.translator_signature(image, image), {"input_shape": image}),
        (SUPERRES, superres, sig.translator_signature((1, 7, 7), image), {"input_shape": (1, 7, 7)}),
    ]
    for name, module, signature, extra in families:
        folder = models / name
        export_onnx(module.eval(), signature, folder / ONNX_FILE)
        errors = check_parity(module, folder / ONNX_FILE, signature)
        assert max(errors.values()) < 1e-4, f"{name}: ONNX Runtime differs from PyTorch by {errors}"
        sampler = name == CGAN
        Manifest(
            name=name,
            kind=sig.ModelKind.SAMPLER if sampler else sig.ModelKind.TRANSLATOR,
            version="1",
            signature=signature,
            image_shape=image,
            max_batch_size=16,
            description=f"random-init test network ({name})",
            dataset="none",
            latent_dim=LATENT_DIM if sampler else None,
            num_classes=NUM_CLASSES if sampler else None,
            input_description=INPUT_DESCRIPTIONS.get(name, ""),
            files={ONNX_FILE: sha256(folder / ONNX_FILE)},
            **extra,
        ).write(folder)


PIXELCNN, FLOW, STYLEGAN, LDM = "pixelcnn-tiny", "flow-tiny", "stylegan-tiny", "ldm-tiny"


@pytest.fixture(scope="session")
def curriculum_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of the newer families, small random-init networks through the real export
    (graph signatures, extra graphs, parity check): ``pixelcnn-tiny`` (autoregressive, class-
    conditional with classifier-free guidance, default scale 2), ``flow-tiny`` (a RealNVP sampler
    with a mixture top prior, and its likelihood graph), ``stylegan-tiny`` (truncation and style
    mixing) and ``ldm-tiny`` (diffusion on a VAE latent, with its decoder)."""
    import torch

    from genserve.export.onnx_export import Servable, export_model_folder
    from genserve.nets import save_checkpoint
    from genserve.nets.flow import Flow, FlowConfig
    from genserve.nets.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
    from genserve.nets.pixelcnn import PixelCNN, PixelCNNConfig
    from genserve.nets.stylegan import StyleGANConfig, StyleGANGenerator

    root = tmp_path_factory.mktemp("curriculum")
    checkpoints, models = root / "checkpoints", root / "models"
    torch.manual_seed(0)
    nets = {
        PIXELCNN: (
            "pixelcnn",
            PixelCNN(PixelCNNConfig(channels=8, layers=2, head_channels=16, guided=True)),
            Servable(PIXELCNN, "tiny PixelCNN", "conditional", default_temperature=1.0, default_guidance=2.0),
        ),
        FLOW: (
            "flow",
            Flow(FlowConfig(steps_per_level=1, hidden=8, top_mixture=10)),
            Servable(
                FLOW, "tiny flow", "sample", extra_graphs=(("likelihood", "likelihood"),), default_temperature=1.0
            ),
        ),
        STYLEGAN: (
            "stylegan_generator",
            StyleGANGenerator(StyleGANConfig(gen_features=8, mapping_layers=2)),
            Servable(STYLEGAN, "tiny StyleGAN", "sample"),
        ),
        LDM: (
            "latent_diffusion",
            LatentDiffusion(LatentDiffusionConfig(width=32, depth=1)),
            Servable(LDM, "tiny latent diffusion", "sample", extra_graphs=(("decoder", "decode"),)),
        ),
    }
    for name, (family, net, servable) in nets.items():
        with torch.no_grad():  # flows and GANs start near the identity / zero: make outputs differ by input
            for p in net.parameters():
                if not p.any():
                    p.normal_(0.0, 0.05)
        if family == "flow":  # a fitted mixture prior: class means apart, so the component shows
            h = torch.randn(200, net.top_dims) + 2.0 * torch.randn(10, net.top_dims).repeat(20, 1)
            net.prior.fit(h, torch.arange(200) % 10, 0.1)
        save_checkpoint(checkpoints / name, family, net.eval(), net.config)
        export_model_folder(checkpoints / name, models / name, name, max_batch_size=16, servable=servable)
    return models
