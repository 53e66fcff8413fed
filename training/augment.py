"""Differentiable augmentation for GANs trained on little data (Zhao et al. 2020, DiffAugment).

The discriminator sees every image, real or generated, through the same random augmentation,
and the generator's gradient flows through it. With 4,000 digits a discriminator otherwise learns
the training set by heart, and its verdicts stop covering every mode; augmenting both sides keeps
it from doing so without the augmentation leaking into the generated images (it is applied to
both distributions alike, so matching them augmented means matching them plain).

Images are (B, C, H, W) in the model range; uncovered pixels take ``fill``, the background
(-1: black in [-1, 1]). Each image draws its own offsets from ``rng``."""

from __future__ import annotations

from collections.abc import Callable

import torch

BACKGROUND = -1.0  # black in the model range [-1, 1]


def translation(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125, fill: float = BACKGROUND) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size along each axis (DiffAugment's 1/8)."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), generator=rng)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), generator=rng)
    # Row y of the output reads row y + dy of the input, padded by one row of ``fill`` each side.
    rows = (torch.arange(h).view(1, h, 1) + dy + 1).clamp(0, h + 1)  # (B, H, 1)
    cols = (torch.arange(w).view(1, 1, w) + dx + 1).clamp(0, w + 1)  # (B, 1, W)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=fill).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    return padded[torch.arange(b).view(b, 1, 1), rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5, fill: float = BACKGROUND) -> torch.Tensor:
    """Blank one square of ``ratio`` of the image's size per image, centred anywhere in it."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h, (b, 1, 1), generator=rng) - sh // 2
    left = torch.randint(0, w, (b, 1, 1), generator=rng) - sw // 2
    y, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    hole = (y >= top) & (y < top + sh) & (xs >= left) & (xs < left + sw)  # (B, H, W)
    return torch.where(hole[:, None], torch.full_like(x, fill), x)


POLICIES: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "translation": translation,
    "cutout": cutout,
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"translation,cutout"`` -> its names, checked; ``""`` -> none."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; known: {sorted(POLICIES)}")
    return names


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], rng: torch.Generator) -> torch.Tensor:
    """``x`` through each augmentation of ``policy`` in turn (identity for an empty policy)."""
    for name in policy:
        x = POLICIES[name](x, rng)
    return x
