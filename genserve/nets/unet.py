"""DDPM ε-prediction UNet (Ho et al. 2020), sized for 28×28 digits on a CPU budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class UNetConfig:
    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention: bool = True  # one self-attention block at the lowest resolution
    groups: int = 8
    dropout: float = 0.1
    # Class-conditional (classifier-free guidance): labels 0 .. num_classes - 1, and label
    # num_classes is the "no class" token the unconditional half of a guided step uses.
    num_classes: int | None = None


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # each (B, C, HW)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (B, HW, HW)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.num_classes is not None:
            # Added to the time embedding. The null label's row is zero, so without a class the
            # network is the unconditional one it may be fine-tuned from (training.ddpm's
            # init_from); the class rows start at about the time embedding's scale, so that the
            # network sees them from the first step.
            self.class_embed = nn.Embedding(config.num_classes + 1, emb_dim)
            nn.init.normal_(self.class_embed.weight, 0.0, 0.3)
            nn.init.zeros_(self.class_embed.weight[config.num_classes])
        self.conv_in = nn.Conv2d(config.image_channels, ch, 3, padding=1)

        block = lambda i, o: ResBlock(i, o, emb_dim, config.groups, config.dropout)  # noqa: E731
        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur = ch
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                self.down.append(block(cur, mult * ch))
                cur = mult * ch
                skip_channels.append(cur)
            if level != len(config.channel_mults) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_channels.append(cur)

        self.mid1 = block(cur, cur)
        self.mid_attn = SelfAttention(cur, config.groups) if config.attention else nn.Identity()
        self.mid2 = block(cur, cur)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for i in range(config.num_res_blocks + 1):
                self.up.append(block(cur + skip_channels.pop(), mult * ch))
                cur = mult * ch
                if level != 0 and i == config.num_res_blocks:
                    self.up.append(
                        nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1))
                    )
        self.norm_out = nn.GroupNorm(config.groups, cur)
        self.conv_out = nn.Conv2d(cur, config.image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" (conditional networks only)."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ε from x_t (B, C, H, W), integer timesteps t (B,) and, for a class-conditional
        network, int64 labels (B,) (``null_label`` for none)."""
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))  # (B, 4C)
        if self.config.num_classes is not None:
            if label is None:
                raise ValueError("a class-conditional UNet needs a label per image (null_label for none)")
            emb = emb + self.class_embed(label)
        elif label is not None:
            raise ValueError("this UNet is not class-conditional: it takes no label")
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
