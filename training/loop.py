"""Pieces every train loop shares: seeding, threads, EMA, resumable state, progress."""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up
    decay = min(decay, (1 + step) / (10 + step)) so early averages are not stuck at init."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def save_state(folder: Path, step: int, generator: torch.Generator, **objects) -> None:
    """Everything needed to resume: step, RNG states and each object's state_dict."""
    state = {
        "step": step,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        **{name: obj.state_dict() for name, obj in objects.items()},
    }
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_FILE)


def load_state(folder: Path, generator: torch.Generator, **objects) -> int:
    """Restore what ``save_state`` wrote; returns the step to continue from (0 if none)."""
    path = folder / STATE_FILE
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=False)
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    log.info("resumed %s at step %d", folder, state["step"])
    return int(state["step"])
