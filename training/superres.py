"""x4 super-resolution of 7x7 digits (LOW_RES_RECIPE) to 28x28. SRResNet: pixel MSE.
SRGAN (Ledig et al. 2017): starts from the SRResNet weights and trains with a content loss in
a pretrained network's feature space plus a small multiple of the adversarial loss. The paper's VGG
features are replaced by the evaluation classifier's penultimate features, the only
pretrained digit network we have; FID is measured in that same space, so SRGAN's FID gain
is partly by construction (docs/models.md says so)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from genserve.nets import load_checkpoint
from genserve.nets.pix2pix import PatchDiscriminator
from genserve.nets.superres import SRResNet, SRResNetConfig
from genserve.training.data import batches, low_res, mnist_splits, to_model_range
from genserve.training.evaluate import DEFAULT_CLASSIFIER
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss
from genserve.training.loop import run_steps, save_family_checkpoint, save_sample_grid, seed_everything

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SRResNetTrainConfig:
    net: SRResNetConfig = field(default_factory=SRResNetConfig)
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 500


@dataclass
class SRGANTrainConfig:
    init: str = str(REPO_ROOT / "checkpoints" / "srresnet-mnist")  # the SRResNet checkpoint to start from
    classifier: str = str(DEFAULT_CLASSIFIER)
    # The paper's 1e-3 balances VGG features rescaled to pixel-MSE magnitude; the classifier's
    # features are ~10x larger in squared distance, so the adversarial term gets 10x more.
    adversarial_weight: float = 1e-2
    pixel_weight: float = 0.0  # optional pixel MSE beside the content loss; 0 = the paper's SRGAN
    disc_features: int = 32
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    beta1: float = 0.9
    seed: int = 0
    checkpoint_every: int = 500


def sr_pairs(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 digits (N, 28, 28) -> (low-res (N, 1, 7, 7), high-res (N, 1, 28, 28)), in [-1, 1]."""
    return to_model_range(low_res(digits)), to_model_range(digits)


def _preview_fn(out: Path, net: SRResNet, config) -> callable:
    """A checkpoint callback: the checkpoint, then a grid of 32 held-out inputs (upscaled) over their outputs."""
    _, held_out = mnist_splits()
    preview, _ = sr_pairs(held_out.images[:32])

    def checkpoint_fn(step: int, seconds: float) -> None:
        save_family_checkpoint(out, "srresnet", net, net.config, config, step, seconds)
        net.eval()
        with torch.no_grad():
            save_sample_grid(out, torch.cat([F.interpolate(preview, scale_factor=4), net(preview)]), step)
        net.train()

    return checkpoint_fn


def train_srresnet(out: Path, config: SRResNetTrainConfig) -> Path:
    generator = seed_everything(config.seed)
    train, _ = mnist_splits()
    sources, targets = sr_pairs(train.images)
    net = SRResNet(config.net)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps, eta_min=config.min_lr)
    batch_iter = batches(sources, config.batch_size, generator)

    def step_fn(step: int) -> dict[str, float]:
        idx = next(batch_iter)
        loss = F.mse_loss(net(sources[idx]), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"mse": loss.item()}

    state = {"net": net, "opt": opt, "sched": sched}
    run_steps(
        out, "srresnet", config.steps, generator, state, step_fn, _preview_fn(out, net, config), config.checkpoint_every
    )
    return out


def train_srgan(out: Path, config: SRGANTrainConfig) -> Path:
    generator = seed_everything(config.seed)
    train, _ = mnist_splits()
    sources, targets = sr_pairs(train.images)
    net, _ = load_checkpoint(Path(config.init))
    net.train()
    classifier, _ = load_checkpoint(Path(config.classifier))
    classifier.requires_grad_(False)  # eval mode (from load_checkpoint): fixed dropout and BN
    disc = PatchDiscriminator(net.config.image_channels, config.disc_features)
    betas = (config.beta1, 0.999)
    opt_g = torch.optim.Adam(net.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas)
    batch_iter = batches(sources, config.batch_size, generator)
    kind = GANLoss.NON_SATURATING

    def step_fn(step: int) -> dict[str, float]:
        idx = next(batch_iter)
        source, target = sources[idx], targets[idx]
        fake = net(source)
        loss_d = discriminator_loss(kind, disc(target), disc(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        content = F.mse_loss(classifier.features(fake), classifier.features(target))
        loss_g = content + config.adversarial_weight * generator_loss(kind, disc(fake))
        if config.pixel_weight:
            loss_g = loss_g + config.pixel_weight * F.mse_loss(fake, target)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        return {"loss_d": loss_d.item(), "content": content.item()}

    state = {"net": net, "disc": disc, "opt_g": opt_g, "opt_d": opt_d}
    run_steps(
        out, "srgan", config.steps, generator, state, step_fn, _preview_fn(out, net, config), config.checkpoint_every
    )
    return out
