"""Pieces every train loop shares: seeding, threads, EMA, resumable state, progress, and the
step loop with checkpoints (``run_steps``)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

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


def warmup_cosine(step: int, steps: int, lr: float, warmup: int, min_lr: float) -> float:
    """The learning rate at ``step``: linear warm-up over ``warmup`` steps to ``lr``, then cosine
    decay to ``min_lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


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


class ConfigMismatch(ValueError):
    """A checkpoint folder holds a run of other networks than the ones asked for."""


def _check_nets(folder: Path, saved: dict | None, family: str, net_config) -> None:
    """Raise ConfigMismatch naming each setting in which ``net_config`` differs from the config the
    folder's run was trained with (``saved``, its config.json): loading its state would fail on
    parameter names, or worse, succeed on a different architecture."""
    from genserve.nets import config_from_dict

    if saved is None:
        return
    trained = dataclasses.asdict(config_from_dict(family, saved))
    asked = dataclasses.asdict(net_config)
    differ = {key: (trained[key], value) for key, value in asked.items() if trained.get(key) != value}
    if differ:
        settings = ", ".join(f"net.{k}: saved {old!r}, asked {new!r}" for k, (old, new) in differ.items())
        again = " ".join(f"--set net.{k}={old}" for k, (old, _) in differ.items())
        raise ConfigMismatch(
            f"{folder} holds a run of other networks ({settings}); resume it with {again}, or train into another --out"
        )


def _resume_advice(saved: dict | None) -> str:
    trained = f"it was trained with {json.dumps(saved)}; " if saved else ""
    return f"{trained}resume it with the same --set settings, or train into another --out"


def load_state(folder: Path, generator: torch.Generator, *, nets: tuple[str, Any] | None = None, **objects) -> int:
    """Restore what ``save_state`` wrote; returns the step to continue from (0 if none).

    Raises ConfigMismatch for a run of other networks: naming each differing setting when ``nets``
    (the checkpoint family and the network config asked for) is given, else once a saved object does
    not fit the one given."""
    path = folder / STATE_FILE
    if not path.exists():
        return 0
    meta_path = folder / "config.json"
    saved = json.loads(meta_path.read_text()).get("config") if meta_path.exists() else None
    if nets is not None:
        _check_nets(folder, saved, *nets)
    state = torch.load(path, weights_only=False)
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    for name, obj in objects.items():
        if name not in state:
            raise ConfigMismatch(f"{folder} holds a run without {name!r}: {_resume_advice(saved)}")
        try:
            obj.load_state_dict(state[name])
        except (RuntimeError, ValueError) as exc:  # parameter names or shapes; optimizer groups
            detail = " ".join(str(exc).split())  # torch's message spans lines; its first one says little
            detail = detail if len(detail) <= 240 else detail[:237] + "..."
            raise ConfigMismatch(
                f"{folder} holds a run of other networks ({name}: {detail}): {_resume_advice(saved)}"
            ) from exc
    log.info("resumed %s at step %d", folder, state["step"])
    return int(state["step"])


def run_steps(
    out: Path,
    desc: str,
    total_steps: int,
    generator: torch.Generator,
    state: dict[str, Any],
    step_fn: Callable[[int], dict[str, float]],
    checkpoint_fn: Callable[[int, float], None],
    checkpoint_every: int = 500,
) -> None:
    """The loop the model families share: resume from ``out`` (``state`` names every object
    with a state_dict to save and restore), run ``step_fn(step)`` -> losses under a progress bar,
    and every ``checkpoint_every`` steps and at the end call ``checkpoint_fn(steps_done,
    seconds_this_run)`` (the family's servable checkpoint) before the resumable state, so a state
    never points past its checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    start = load_state(out, generator, **state)
    t0 = time.time()
    with tqdm(total=total_steps, initial=start, desc=desc, unit="step", smoothing=0.05) as bar:
        for step in range(start, total_steps):
            losses = step_fn(step)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            done = step + 1
            if done % checkpoint_every == 0 or done == total_steps:
                checkpoint_fn(done, time.time() - t0)
                save_state(out, done, generator, **state)


def server_latents(num: int, latent_dim: int, seed: int = 0) -> torch.Tensor:
    """The latents the server draws for images 0 .. num-1 of a request with ``seed``: (num, latent_dim)."""
    from genserve import noise

    z = noise.gaussian(np.full(num, seed), np.arange(num), np.full(num, noise.INITIAL_STEP), (latent_dim,))
    return torch.from_numpy(z)


def save_family_checkpoint(
    out: Path, family: str, model: torch.nn.Module, net_config, train_config, step: int, seconds: float
) -> None:
    """The servable checkpoint with the training config, step and wall time it took."""
    from dataclasses import asdict

    from genserve.nets import save_checkpoint

    extra = {"train": asdict(train_config), "step": step, "train_seconds_this_run": round(seconds, 1)}
    save_checkpoint(out, family, model, net_config, extra)


def save_sample_grid(out: Path, images: torch.Tensor, step: int, nrow: int = 8) -> Path:
    """Model-range images (N, 1, H, W) -> ``out/samples/stepNNNNNN.png``."""
    from genserve import images as image_io

    return image_io.save_grid(image_io.to_uint8(images.detach().numpy()), out / "samples" / f"step{step:06d}.png", nrow)
