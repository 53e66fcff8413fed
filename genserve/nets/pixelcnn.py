"""Gated, class-conditional PixelCNN (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders") for 28x28 digits, with a 256-way softmax per pixel.

Two stacks remove the blind spot of the masked PixelCNN: the vertical stack at row i sees rows
<= i (every column its kernel reaches) and reaches the horizontal stack shifted one row down, so
row i of the horizontal stack sees only the rows above it; the horizontal stack sees its own row
up to the current column, and its input is the image shifted one column right. So the output at a
pixel depends on the pixels strictly before it in row-major order, by construction (padding and
shifts, no masked weights). Each layer is a gated unit tanh(W_f * x + V_f y) * sigmoid(W_g * x +
V_g y) whose class term V y is a per-layer embedding of the label, added as a bias.

``PixelCNNStep`` is the served graph: one pixel per call, inverse-CDF sampling from the
per-slot noise (u = Phi(noise at the pixel)), so a sample depends on its own seed only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genserve import noise as noise_lib
from genserve import schedule


@dataclass
class PixelCNNConfig:
    image_channels: int = 1
    image_size: int = 28
    num_classes: int | None = 10  # None: unconditional
    levels: int = 256
    channels: int = 48  # width of both stacks
    layers: int = 7  # gated layers: one with first_kernel, then kernel-sized ones
    first_kernel: int = 7  # odd; reaches first_kernel // 2 rows up and columns aside
    kernel: int = 3  # odd; reaches dilation * (kernel // 2) rows up and columns aside
    # Dilation of the layers after the first, cycled: the receptive field grows by 1 + 2 + 4 rows per
    # three layers at the cost of 1 + 1 + 1, so a few narrow layers see most of a digit.
    dilation_cycle: tuple[int, ...] = (1, 2, 4)
    head_channels: int = 64  # hidden width of the per-pixel 1x1 head before the softmax logits
    # Channels of a learned image per class, fed with the pixels: where each class puts its ink,
    # which the gates' position-independent class bias cannot say (0: the bias alone, as the paper).
    class_map_channels: int = 8
    # Classifier-free guidance (Ho & Salimans 2022) on the log-probabilities: label num_classes is
    # the "no class" token (trained by label dropout), and the step takes a guidance scale per slot.
    guided: bool = False

    @property
    def label_rows(self) -> int:
        """Rows of each class embedding: the classes, and the null label of a guided net (0: unconditional)."""
        return 0 if self.num_classes is None else self.num_classes + int(self.guided)

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(kernel, dilation) of each gated layer."""
        cycle = self.dilation_cycle
        return [(self.first_kernel, 1)] + [(self.kernel, cycle[i % len(cycle)]) for i in range(self.layers - 1)]

    @property
    def rows_up(self) -> int:
        """How many rows above a pixel its logits can see: the step graph runs on that window only."""
        return 1 + sum(d * (k // 2) for k, d in self.layer_shapes())


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Row i takes row i - 1 (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Column j takes column j - 1 (zeros in column 0)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(first half) * sigmoid(second half) over the channel axis."""
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel: int, dilation: int, label_rows: int, residual: bool):
        super().__init__()
        self.reach = dilation * (kernel // 2)
        self.residual = residual
        # Vertical: rows i - reach .. i, columns j - reach .. j + reach. Horizontal: row i, columns j - reach .. j.
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (kernel // 2 + 1, kernel), dilation=dilation)
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, kernel // 2 + 1), dilation=dilation)
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        # The class term of both gates (vertical, horizontal): one bias per label, zero at the start.
        self.embed = nn.Embedding(label_rows, 4 * channels) if label_rows else None
        if self.embed is not None:
            nn.init.zeros_(self.embed.weight)

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, label: torch.Tensor | None, inside: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v (B, C_in, Hv, W) and h (B, C_in, Hh, W), h on the last Hh <= Hv rows of v (all of them on
        the whole image; one row in the step's window). ``inside`` (B, 1, Hv, 1): 0 on a window's rows
        above the image, which must read as the whole image's zero padding."""
        r, hh = self.reach, h.shape[2]
        pre_v = self.vertical(F.pad(v, (r, r, r, 0)))  # (B, 2C, Hv, W): rows <= i
        if inside is not None:
            pre_v = pre_v * inside  # the row above the image's first row is padding to the horizontal stack
        above = down_shift(pre_v) if hh == pre_v.shape[2] else pre_v[:, :, -hh - 1 : -1]  # (B, 2C, Hh, W)
        pre_h = self.horizontal(F.pad(h, (r, 0, 0, 0)))  # (B, 2C, Hh, W): row i, columns <= j
        pre_h = pre_h + self.v_to_h(above)  # the vertical stack one row up: rows < i only
        if self.embed is not None:
            bias_v, bias_h = self.embed(label)[:, :, None, None].chunk(2, dim=1)  # (B, 2C, 1, 1) each
            pre_v, pre_h = pre_v + bias_v, pre_h + bias_h
        out_v, out_h = gate(pre_v), self.h_out(gate(pre_h))  # (B, C, Hv, W), (B, C, Hh, W)
        if self.residual:
            out_h = out_h + h
        if inside is not None:
            out_v, out_h = out_v * inside, out_h * inside[:, :, -hh:]
        return out_v, out_h


class PixelCNN(nn.Module):
    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        if config.image_channels != 1:
            raise ValueError("this PixelCNN models one channel (image_channels=1)")
        if config.guided and config.num_classes is None:
            raise ValueError("guidance needs a class-conditional PixelCNN (num_classes)")
        self.config = config
        c = config.channels
        k_map = config.class_map_channels if config.num_classes else 0
        size = config.image_size
        # Depends on the label only, never on pixels, so every position may see all of it.
        self.class_map = nn.Embedding(config.label_rows, k_map * size * size) if k_map else None
        if self.class_map is not None:
            nn.init.zeros_(self.class_map.weight)
        # Input: the image, the class map, and a channel of ones that tells the zero padding apart.
        self.layers = nn.ModuleList(
            GatedLayer(2 + k_map if i == 0 else c, c, k, d, config.label_rows, residual=i > 0)
            for i, (k, d) in enumerate(config.layer_shapes())
        )
        # After layer l, the rows of the vertical stack a window still needs: the last row and the
        # rows the later layers reach up from the row above it.
        reach = [layer.reach for layer in self.layers]
        self.rows_kept = [2 + sum(reach[i + 1 :]) for i in range(len(reach))]
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(c, config.head_channels, 1),
            nn.ReLU(),
            nn.Conv2d(config.head_channels, config.levels, 1),
        )

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" (guided nets only)."""
        return self.config.num_classes if self.config.guided else None

    def inputs(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, 1, H, W) and the label's class map -> the stacks' per-pixel inputs (B, 1 + K, H, W)."""
        if self.class_map is None:
            return x
        b, _, height, width = x.shape
        return torch.cat([x, self.class_map(label).view(b, -1, height, width)], dim=1)

    def features(
        self, inputs: torch.Tensor, label: torch.Tensor | None = None, inside: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``inputs(x, label)`` (B, 1 + K, H, W) -> horizontal-stack features (B, C, H, W); position p
        sees pixels < p.

        With ``inside`` (B, 1, rows_up + 1, 1), the inputs are a window of rows that ends at one
        pixel's row and may reach above the image (``inside`` 1 on the image's rows, 0 above it) ->
        the features of the window's last row only (B, C, 1, W), equal to the whole image's on that
        row: the horizontal stack runs on that row alone and the vertical one on the rows still in reach."""
        b, _, height, width = inputs.shape
        ones = inputs.new_ones(b, 1, height, width) if inside is None else inside.expand(b, 1, height, width)
        x = torch.cat([inputs, ones], dim=1)  # (B, 2 + K, H, W)
        v, h = x, right_shift(x)  # the horizontal stack starts one column right: column j sees < j
        if inside is not None:
            h = h[:, :, -1:]
        for layer, keep in zip(self.layers, self.rows_kept, strict=True):
            v, h = layer(v, h, label, inside)
            if inside is not None:  # rows the later layers cannot reach from the last row are dropped
                v, inside = v[:, :, -keep:], inside[:, :, -keep:]
        return h

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, 1, H, W) in [-1, 1] on the levels v / 127.5 - 1, label (B,) int64 -> logits (B, levels, H, W)."""
        return self.head(self.features(self.inputs(x, label), label))


class PixelCNNStep(nn.Module):
    """One pixel per call, in ``signature.autoregressive_step_signature``'s contract:
    x (B, 1, H, W), t (B,) int64, coef (B, 6) (column 0: 1 / temperature), noise (B, 1, H, W)
    [, label (B,) int64 [, guidance (B,) float32]] -> x_next: x before position t, the sampled
    level at t, zeros after.

    A guided net (``config.guided``) samples from classifier-free-guided log-probabilities, the
    net run on the batch twice over (each slot's label, then the null label) and combined per slot
    as log p_u + w (log p_c - log p_u): w = 1 is the plain conditional model, w = 0 the
    unconditional one, w > 1 sharpens towards the asked class (as ``GuidedDiffusionStep``'s ε).

    The net runs on the ``rows_up + 1`` rows that end at pixel t's row (all its logits can see),
    not on the whole image: the same logits at a fraction of the cost, once per pixel."""

    def __init__(self, net: PixelCNN):
        super().__init__()
        self.net = net

    def logits(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """The net's logits (B, levels) at row-major position t (B,) (clamped into the image)."""
        b, _, height, width = x.shape
        rows = self.net.config.rows_up + 1
        t = t.clamp(0, height * width - 1)
        row, col = t // width, t % width  # (B,)
        padded = F.pad(self.net.inputs(x, label), (0, 0, rows - 1, 0))  # (B, 1 + K, rows - 1 + H, W)
        index = row[:, None] + torch.arange(rows, device=x.device)  # (B, rows): padded rows row - rows + 1 .. row
        per_channel = index[:, None, :, None].expand(b, padded.shape[1], rows, width)
        window = padded.gather(2, per_channel)  # (B, 1 + K, rows, W): zero rows above the image
        inside = (index >= rows - 1).to(x.dtype)[:, None, :, None]  # (B, 1, rows, 1)
        feats = self.net.features(window, label, inside)[:, :, 0]  # (B, C, W): pixel t's row
        at = col[:, None, None].expand(b, feats.shape[1], 1)  # (B, C, 1)
        return self.net.head(feats.gather(2, at)[..., None]).flatten(1)  # (B, levels): the head at pixel t only

    def guided_logits(
        self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor, guidance: torch.Tensor
    ) -> torch.Tensor:
        """Classifier-free-guided log-probabilities (B, levels) at position t, ``guidance`` (B,) per slot."""
        b = x.shape[0]
        null = torch.full_like(label, self.net.null_label)
        both = self.logits(torch.cat([x, x]), torch.cat([t, t]), torch.cat([label, null]))  # (2B, levels)
        log_p = F.log_softmax(both, dim=1)
        log_c, log_u = log_p[:b], log_p[b:]
        return log_u + guidance[:, None] * (log_c - log_u)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        coef: torch.Tensor,
        noise: torch.Tensor,
        label: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, _, height, width = x.shape
        levels = self.net.config.levels
        t = t.clamp(0, height * width - 1)  # any int is a valid request: past the end resamples the last pixel
        if self.net.null_label is not None:
            if label is None or guidance is None:
                raise ValueError("a guided PixelCNN step takes a label and a guidance scale per slot")
            logits = self.guided_logits(x, t, label, guidance)
        else:
            logits = self.logits(x, t, label)
        probs = torch.softmax(logits * coef[:, :1], dim=1)  # (B, levels)
        cdf = torch.cumsum(probs, dim=1)
        z = noise.flatten(1).gather(1, t[:, None])  # (B, 1)
        u = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # Phi(z): uniform in (0, 1)
        level = (cdf < u).sum(dim=1).clamp(max=levels - 1)  # inverse CDF: (B,) int64
        value = level.to(x.dtype) / ((levels - 1) / 2) - 1.0  # (B,) on the levels v / 127.5 - 1
        pos = torch.arange(height * width, device=x.device).view(1, 1, height, width)
        tt = t.view(b, 1, 1, 1)
        return torch.where(pos < tt, x, torch.where(pos == tt, value.view(b, 1, 1, 1), torch.zeros_like(x)))


@torch.no_grad()
def sample(
    step: PixelCNNStep,
    labels: np.ndarray | torch.Tensor,
    seed: int,
    temperature: float = 1.0,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Reference loop with the server's noise keys (as ``nets.step.sample``): image i of seed s
    starts from gaussian(s, i, INITIAL_STEP) and step k (pixel k, row-major) draws gaussian(s, i,
    k + 1). ``labels`` (N,) gives the number of images (and their classes, for a conditional net)
    -> images (N, 1, H, W) in [-1, 1] on the 256 levels. ``guidance``: a guided net's scale."""
    cfg = step.net.config
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n = len(labels)
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    seeds, index = np.full(n, seed), np.arange(n)
    x = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(n, noise_lib.INITIAL_STEP), shape))
    coef = torch.zeros(n, len(schedule.COEF_COLUMNS))
    coef[:, 0] = 1.0 / temperature
    extra = (labels,) if cfg.num_classes is not None else ()
    if cfg.guided:
        extra += (torch.full((n,), guidance, dtype=torch.float32),)
    for k in range(cfg.image_size * cfg.image_size):
        z = torch.from_numpy(noise_lib.gaussian(seeds, index, np.full(n, k + 1), shape))
        x = step(x, torch.full((n,), k, dtype=torch.int64), coef, z, *extra)
    return x
