"""Image conversions shared by the server, the client and training: model range <-> uint8,
PNG bytes, and sample grids."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Model output in [-1, 1], (N, C, H, W) float -> uint8 (N, H, W, C) with round-half-even."""
    return (
        np.clip(np.rint((np.asarray(x, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    )


def from_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> model input in [-1, 1], float32 (N, C, H, W): v / 127.5 - 1, the inverse of
    ``to_uint8`` on its 256 levels."""
    return np.ascontiguousarray((np.asarray(x, dtype=np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, C) -> PNG bytes (grey for one channel)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W) for grey or (H, W, C) otherwise."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) -> one uint8 image with the N tiles in rows of ``nrow``."""
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[
            i
        ]
    return out[:, :, 0] if c == 1 else out


def save_grid(images: np.ndarray, path: Path, nrow: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(images, nrow)).save(path)
    return path


@contextlib.contextmanager
def saved_figure(out: Path, *subplots_args: Any, **subplots_kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``plt.subplots(...)`` for a plot written to ``out`` (PNG, 120 dpi) when the block ends.

    matplotlib (Agg, no display) is imported here, only by the commands that draw; the figure is
    closed even if drawing fails."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*subplots_args, **subplots_kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
