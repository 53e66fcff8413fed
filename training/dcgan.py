"""DCGAN training (Radford et al. 2016): non-saturating GAN loss, Adam(2e-4, β1 = 0.5).

Three additions to the paper's recipe, all outside the networks:
- differentiable augmentation (DiffAugment, Zhao et al. 2020): the discriminator sees every
  real and generated batch randomly translated and cut out, the same transforms on both sides,
  with gradients flowing through them to the generator. With 4,000 training digits the
  discriminator otherwise memorises the real set and the generator's strokes stay broken;
- an exponential moving average of the generator's weights (Yazıcı et al. 2019), whose
  BatchNorm statistics are re-estimated from its own activations before it is saved
  (averaged weights with the live generator's running statistics do not match);
- checkpoint selection: every ``eval_every`` steps the EMA generator is scored by the
  evaluation classifier on ``eval_samples`` images — fraction confidently classified, and
  FID against *train-split* digits (the held-out split stays untouched for the final
  report) — and the served checkpoint is the most confident one whose FID is within
  ``fid_slack`` of the best FID seen. GAN quality oscillates during training; the last
  step is rarely the best one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from genserve import images, noise
from genserve.nets import save_checkpoint
from genserve.nets.dcgan import DCGANConfig, Discriminator, Generator
from genserve.training.data import batches, mnist_splits, to_model_range
from genserve.training.loop import EMA, load_state, save_state, seed_everything

log = logging.getLogger(__name__)

HISTORY_FILE = "selection.json"
SNAPSHOTS = "snapshots"


@dataclass
class DCGANTrainConfig:
    net: DCGANConfig = field(default_factory=DCGANConfig)
    steps: int = 15000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 1000
    eval_every: int = 1000
    eval_samples: int = 1000
    fid_slack: float = 1.25
    augment: bool = True  # DiffAugment (translation + cutout) on both sides of the discriminator


def train_dcgan(out: Path, config: DCGANTrainConfig) -> Path:
    generator_rng = seed_everything(config.seed)
    train, _ = mnist_splits()
    data = to_model_range(train.images)  # (N, 1, 28, 28)
    gen, disc = Generator(config.net), Discriminator(config.net)
    ema = EMA(gen, config.ema_decay)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    out.mkdir(parents=True, exist_ok=True)
    start = load_state(out, generator_rng, gen=gen, disc=disc, ema=ema.model, opt_g=opt_g, opt_d=opt_d)
    judge = _Judge(train.images, config.eval_samples)

    t0 = time.time()
    bar = tqdm(total=config.steps, initial=start, desc="dcgan", unit="step", smoothing=0.05)
    batch_iter = batches(data, config.batch_size, generator_rng)
    for step in range(start, config.steps):
        real = data[next(batch_iter)]  # (B, 1, 28, 28)
        z = torch.randn(len(real), config.net.latent_dim, generator=generator_rng)
        fake = gen(z)
        ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
        aug = (lambda x: diff_augment(x, generator_rng)) if config.augment else (lambda x: x)

        loss_d = F.binary_cross_entropy_with_logits(disc(aug(real)), ones) + F.binary_cross_entropy_with_logits(
            disc(aug(fake.detach())), zeros
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        loss_g = F.binary_cross_entropy_with_logits(disc(aug(fake)), ones)  # non-saturating: max log D(G(z))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(gen, step)

        bar.update(1)
        bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            served = recalibrated(ema.model, config.net.latent_dim)
            score = judge.score(served)
            _record(out, done, score, served, config)
            bar.write(f"step {done}: confident {score['confident']:.3f}, FID vs train {score['fid_train']:.1f}")
            if done % config.sample_every == 0 or done == config.steps:
                _sample_grid(out, served, config.net.latent_dim, done)
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_state(out, done, generator_rng, gen=gen, disc=disc, ema=ema.model, opt_g=opt_g, opt_d=opt_d)
    bar.close()
    _select(out, config, time.time() - t0)
    return out


BACKGROUND = -1.0  # black in the model's [-1, 1] range: what translation and cutout fill in


def diff_augment(x: torch.Tensor, rng: torch.Generator, shift: float = 0.125, cut: float = 0.25) -> torch.Tensor:
    """DiffAugment's translation and cutout policies for (B, C, H, W) digits, differentiable in x.

    Each image moves by up to ``shift`` of its size in each direction and loses one square of
    ``cut`` of its size, both filled with background."""
    b, _, h, w = x.shape
    sy, sx = int(h * shift + 0.5), int(w * shift + 0.5)
    dy = torch.randint(-sy, sy + 1, (b, 1, 1), generator=rng)
    dx = torch.randint(-sx, sx + 1, (b, 1, 1), generator=rng)
    ys = torch.arange(h)[None, :, None] - dy  # (B, H, 1): source row of each output row
    xs = torch.arange(w)[None, None, :] - dx  # (B, 1, W)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)  # (B, H, W)
    src = ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)  # (B, H, W) flat source index
    flat = x.flatten(2)  # (B, C, H*W)
    moved = flat.gather(2, src.flatten(1)[:, None, :].expand(-1, x.shape[1], -1)).view_as(x)
    ch, cw = int(h * cut + 0.5), int(w * cut + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=rng)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=rng)
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    cutout = ((rows - cy).abs() < ch // 2 + 1) & ((cols - cx).abs() < cw // 2 + 1)  # (B, H, W)
    keep = (inside & ~cutout)[:, None]  # (B, 1, H, W)
    return torch.where(keep, moved, torch.full_like(moved, BACKGROUND))


@torch.no_grad()
def recalibrated(gen: Generator, latent_dim: int, batches_: int = 50, batch_size: int = 256) -> Generator:
    """A copy of ``gen`` whose BatchNorm running statistics are the exact averages over
    ``batches_`` batches of its own activations (momentum None = cumulative average)."""
    model = copy.deepcopy(gen)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    rng = torch.Generator().manual_seed(1234)
    for _ in range(batches_):
        model(torch.randn(batch_size, latent_dim, generator=rng))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


class _Judge:
    """Scores a generator with the evaluation classifier (no held-out data involved)."""

    def __init__(self, train_images: np.ndarray, n: int):
        from genserve.training.evaluate import Evaluator, fid

        self.evaluator, self.fid, self.n = Evaluator(), fid, n
        rng = np.random.default_rng(0)
        ref = train_images[rng.choice(len(train_images), n, replace=False)]
        self.ref_feats, _ = self.evaluator.features_and_probs(ref)

    @torch.no_grad()
    def score(self, gen: Generator) -> dict:
        z = noise.gaussian(np.full(self.n, 999), np.arange(self.n), np.zeros(self.n), (gen.config.latent_dim,))
        x = images.to_uint8(gen(torch.from_numpy(z)).numpy())
        feats, probs = self.evaluator.features_and_probs(x)
        hist = np.bincount(probs.argmax(1), minlength=10)
        return {
            "confident": float((probs.max(1) >= 0.9).mean()),
            "fid_train": self.fid(feats, self.ref_feats),
            "classes": int((hist > 0).sum()),
        }


def _record(out: Path, step: int, score: dict, served: Generator, config: DCGANTrainConfig) -> None:
    history_path = out / HISTORY_FILE
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    history = [h for h in history if h["step"] != step] + [{"step": step, **score}]
    save_checkpoint(out / SNAPSHOTS / f"step{step:06d}", "dcgan_generator", served, config.net, {"step": step})
    history_path.write_text(json.dumps(history, indent=1) + "\n")


def _select(out: Path, config: DCGANTrainConfig, seconds: float) -> None:
    """Serve the most confident snapshot among those with all ten classes and an FID
    within ``fid_slack`` of the best; write it as the folder's checkpoint."""
    from genserve.nets import load_checkpoint

    history = json.loads((out / HISTORY_FILE).read_text())
    best_fid = min(h["fid_train"] for h in history)
    eligible = [h for h in history if h["classes"] == 10 and h["fid_train"] <= config.fid_slack * best_fid]
    chosen = max(eligible or history, key=lambda h: h["confident"])
    model, _ = load_checkpoint(out / SNAPSHOTS / f"step{chosen['step']:06d}")
    extra = {
        "train": dataclasses.asdict(config),
        "step": config.steps,
        "selected": chosen,
        "train_seconds_this_run": round(seconds, 1),
    }
    save_checkpoint(out, "dcgan_generator", model, config.net, extra)
    log.info("selected step %d: %s", chosen["step"], chosen)


@torch.no_grad()
def _sample_grid(out: Path, gen: Generator, latent_dim: int, step: int) -> None:
    z = noise.gaussian(np.zeros(64), np.arange(64), np.zeros(64), (latent_dim,))  # the server's latents for seed 0
    x = gen(torch.from_numpy(z)).numpy()
    images.save_grid(images.to_uint8(x), out / "samples" / f"step{step:06d}.png", nrow=8)
