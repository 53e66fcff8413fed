"""Images/s of three DDPM sampling loops on the same UNet weights, batch, step count and threads.
Writes benchmarks/results/sampler.json and sampler.png next to it.

    python -m benchmarks.sampler [--model ddpm-mnist] [--models DIR] [--batch 16] [--steps 1000]
                                 [--threads N] [--rounds 3] [--json OUT.json]

1. ``diffusers``: Hugging Face diffusers' ``DDPMScheduler`` driving our UNet in PyTorch eager, the
   loop of ``DDPMPipeline.__call__`` (the baseline most people would write).
2. ``algorithm2``: Ho et al. 2020 Algorithm 2 transcribed line by line in PyTorch eager.
3. ``fused``: genserve's served loop in-process (``ModelRunner.generate_float``): the fused ONNX step
   graph (UNet + update) on ONNX Runtime, counter-based noise, per-slot coefficients.

``loop_overhead`` is the fused loop's wall time over ``steps`` x the median time of one bare engine
call at the same batch: how much the Python loop around the graph (noise, feeds, validation) costs.
1.0 means the loop is free; the graph itself is what a faster engine (TensorRT) would speed up.

The three loops draw different noise (diffusers and Algorithm 2 from ``torch.Generator``, the server
from ``genserve.noise``), so their images are not compared pixel by pixel; the unit tests pin that the
updates are equal given the same noise, and the report records a range check of each loop's images.

diffusers is an optional dependency (``pip install -e '.[bench]'``), imported only when this runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from benchmarks.report import new_output
from genserve import images, schedule
from genserve.manifest import DiffusionSpec

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

log = logging.getLogger("benchmarks.sampler")  # not __name__, which is "__main__" under python -m

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOOPS = ("diffusers", "algorithm2", "fused")
IN_RANGE = 1.05  # model range is [-1, 1]; a little slack for unclipped final steps
PLAUSIBLE_FRACTION = 0.95  # of pixels within ±IN_RANGE for a loop's images to count as plausible
INSTALL_HINT = "pip install -e '.[bench]'"


def _default_threads() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class SamplerBenchConfig:
    """One benchmark run. ``threads`` is both torch's intra-op threads and ONNX Runtime's."""

    model_dir: Path
    batch: int = 16
    steps: int = schedule.NUM_TIMESTEPS
    threads: int = field(default_factory=_default_threads)
    warmup_steps: int = 5  # steps each loop runs untimed first (allocator, oneDNN primitives, ORT arenas)
    engine_step_calls: int = 50  # timed single engine calls for the median step time
    seed: int = 0
    # Each loop is timed this many times, the loops interleaved (a rotated order every round), and
    # its median kept: on a shared machine one run of each drifts by 20% and more.
    rounds: int = 3

    def __post_init__(self) -> None:
        for name in ("batch", "steps", "threads", "warmup_steps", "engine_step_calls", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def require_diffusers() -> Any:
    """The diffusers module, or an ImportError that says how to install the optional extra."""
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError(
            f"the sampler benchmark needs Hugging Face diffusers (a benchmark-only dependency): {INSTALL_HINT}"
        ) from exc
    return diffusers


def diffusers_scheduler(spec: DiffusionSpec) -> DDPMScheduler:
    """diffusers' DDPM scheduler on the model's schedule, matching the served DDPM sampler:
    epsilon prediction, x̂₀ clipped to [-1, 1] (Ho et al.'s code), σ²_t = β̃_t ("fixed small")."""
    if spec.beta_schedule != "linear":
        raise ValueError(f"only the linear beta schedule is supported, got {spec.beta_schedule!r}")
    diffusers = require_diffusers()
    return diffusers.DDPMScheduler(
        num_train_timesteps=spec.num_timesteps,
        beta_start=spec.beta_start,
        beta_end=spec.beta_end,
        beta_schedule="linear",
        variance_type="fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
    )


@torch.inference_mode()
def diffusers_sample(
    unet: nn.Module, scheduler: DDPMScheduler, x: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The denoising loop of diffusers' ``DDPMPipeline``, with our UNet in place of ``UNet2DModel``.

    ``x`` (B, C, H, W) is x_T; ``scheduler.set_timesteps`` must have been called. The scheduler draws
    its noise from ``generator`` (``randn_tensor``), one (B, C, H, W) draw per step except the last.
    """
    for t in scheduler.timesteps:
        eps = unet(x, t.expand(len(x)))  # (B, C, H, W); UNet2DModel broadcasts t the same way
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


@torch.inference_mode()
def algorithm2_sample(
    unet: nn.Module,
    x_T: torch.Tensor,
    diffusion: schedule.GaussianDiffusion,
    timesteps: Sequence[int] | np.ndarray,
    draw_noise: Callable[[int], torch.Tensor],
    variance: schedule.VarianceType = schedule.VarianceType.FIXED_LARGE,
) -> torch.Tensor:
    """Ho et al. 2020, Algorithm 2 (Sampling), transcribed literally:

        1: x_T ~ N(0, I)
        2: for t = T, ..., 1 do
        3:     z ~ N(0, I) if t > 1, else z = 0
        4:     x_{t-1} = 1/sqrt(α_t) (x_t − (1 − α_t)/sqrt(1 − ᾱ_t) ε_θ(x_t, t)) + σ_t z
        5: end for
        6: return x_0

    No x̂₀ clipping (that is in their code, not in the algorithm). σ²_t = β_t by default, the
    paper's first choice; FIXED_SMALL gives σ²_t = β̃_t. ``timesteps`` are 0-based and descending
    (the paper's t − 1): the full schedule T−1, …, 0 is the algorithm verbatim; on a strided
    sub-schedule α_t = ᾱ_t/ᾱ_prev (the respaced betas of improved-diffusion). ``draw_noise(i)`` is
    the z of iteration i, called for every iteration but the last.
    """
    alphas_cumprod = diffusion.alphas_cumprod
    x = x_T  # (B, C, H, W)
    for i, t in enumerate(timesteps):
        t = int(t)
        last = i == len(timesteps) - 1  # the paper's t = 1 on the full schedule
        alpha_bar_t = alphas_cumprod[t]
        alpha_bar_prev = 1.0 if last else alphas_cumprod[int(timesteps[i + 1])]
        alpha_t = alpha_bar_t / alpha_bar_prev  # diffusion.alphas[t] on the full schedule
        beta_t = 1.0 - alpha_t
        if variance is schedule.VarianceType.FIXED_LARGE:
            sigma_t = math.sqrt(beta_t)
        else:
            sigma_t = math.sqrt(beta_t * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t))
        z = 0.0 if last else draw_noise(i)
        eps = unet(x, torch.full((len(x),), t, dtype=torch.int64))  # ε_θ(x_t, t), (B, C, H, W)
        x = (x - (1.0 - alpha_t) / math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_t) + sigma_t * z
    return x


def speed_report(seconds: Mapping[str, float], engine_step_seconds: float, batch: int, steps: int) -> dict[str, Any]:
    """Throughput and ratios from measured wall times (pure, so its arithmetic is tested alone).

    ``seconds`` maps each of LOOPS to the wall time of one ``batch``-image, ``steps``-step loop;
    ``engine_step_seconds`` is the median of one bare engine call at that batch.
    """
    missing = [name for name in LOOPS if name not in seconds]
    if missing:
        raise ValueError(f"missing timings for {missing}")
    if min(seconds[name] for name in LOOPS) <= 0 or engine_step_seconds <= 0:
        raise ValueError("timings must be positive")
    ips = {name: batch / seconds[name] for name in LOOPS}
    return {
        "seconds": {name: seconds[name] for name in LOOPS},
        "images_per_second": ips,
        "speedup_vs_diffusers": ips["fused"] / ips["diffusers"],
        "speedup_vs_algorithm2": ips["fused"] / ips["algorithm2"],
        "engine_step_seconds": engine_step_seconds,
        "loop_overhead": seconds["fused"] / (steps * engine_step_seconds),
    }


def sample_sanity(x: np.ndarray) -> dict[str, Any]:
    """Range statistics of one loop's images (N, C, H, W): trained models land in about [-1, 1]."""
    x = np.asarray(x, dtype=np.float64)
    finite = bool(np.isfinite(x).all())
    in_range = float((np.abs(x) <= IN_RANGE).mean())
    return {
        "shape": list(x.shape),
        "finite": finite,
        "fraction_in_range": in_range,
        "range": [-IN_RANGE, IN_RANGE],
        "min": float(np.nanmin(x)),
        "max": float(np.nanmax(x)),
        "mean": float(np.nanmean(x)),
        "std": float(np.nanstd(x)),
        "plausible": finite and in_range >= PLAUSIBLE_FRACTION,
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _engine_step_seconds(runner: Any, config: SamplerBenchConfig) -> tuple[float, list[float]]:
    """Median wall time of one bare engine call on batch-``config.batch`` feeds (a mid-schedule step)."""
    from genserve import noise
    from genserve.serving.domain import GenerateRequest

    plan = runner.validate(
        GenerateRequest(runner.name, config.batch, steps=config.steps, sampler=schedule.Sampler.DDPM)
    )
    k = len(plan.timesteps) // 2
    n, shape = config.batch, runner.manifest.image_shape
    seeds, index = np.full(n, config.seed), np.arange(n)
    feeds = {
        "x": noise.gaussian(seeds, index, np.full(n, noise.INITIAL_STEP), shape),  # (B, C, H, W)
        "t": np.full(n, plan.timesteps[k], dtype=np.int64),
        "coef": np.tile(plan.coefs[k], (n, 1)),  # (B, 6)
        "noise": noise.gaussian(seeds, index, np.full(n, k + 1), shape),
    }
    engine = runner.engines[0]
    for _ in range(config.warmup_steps):
        engine.run(feeds)
    times = [_timed(lambda: engine.run(feeds))[0] for _ in range(config.engine_step_calls)]
    return statistics.median(times), times


def _versions() -> dict[str, str]:
    import onnxruntime

    diffusers = require_diffusers()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "diffusers": diffusers.__version__,
        "numpy": np.__version__,
    }


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        # A busy machine (other jobs) slows every loop, and multi-threaded torch most: read numbers with it.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def run_sampler_benchmark(config: SamplerBenchConfig, command: str | None = None) -> dict[str, Any]:
    """Warm up and time the three loops, then the bare engine step; the report as a JSON-ready dict.
    ``command`` is recorded as the one that made it (default: this process's command line)."""
    from genserve.nets import load_checkpoint
    from genserve.serving.domain import GenerateRequest
    from genserve.serving.runner import ModelRunner

    require_diffusers()  # fail before loading anything
    machine = _machine()
    runner = ModelRunner(config.model_dir, intra_op_threads=config.threads)
    spec = runner.manifest.diffusion
    if spec is None:
        raise ValueError(f"{runner.name} is a {runner.manifest.kind.value} model, not a diffusion model")
    if not config.steps <= spec.num_timesteps:
        raise ValueError(f"steps must be in [1, {spec.num_timesteps}] for {runner.name}, got {config.steps}")
    if config.batch > runner.engine.max_batch_size:
        raise ValueError(f"batch must be <= the engine's limit {runner.engine.max_batch_size}, got {config.batch}")
    unet, _ = load_checkpoint(config.model_dir / "weights")
    diffusion = spec.gaussian_diffusion()
    scheduler = diffusers_scheduler(spec)
    shape = (config.batch, *runner.manifest.image_shape)

    def diffusers_loop(steps: int) -> np.ndarray:
        scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(config.seed)
        return diffusers_sample(unet, scheduler, torch.randn(shape, generator=g), g).numpy()

    def algorithm2_loop(steps: int) -> np.ndarray:
        g = torch.Generator().manual_seed(config.seed)
        x_T = torch.randn(shape, generator=g)
        ts = schedule.strided_timesteps(steps, spec.num_timesteps)
        return algorithm2_sample(unet, x_T, diffusion, ts, lambda i: torch.randn(shape, generator=g)).numpy()

    def fused_loop(steps: int) -> np.ndarray:
        request = GenerateRequest(
            runner.name, config.batch, seed=config.seed, steps=steps, sampler=schedule.Sampler.DDPM
        )
        return runner.generate_float(request)

    loops = {"diffusers": diffusers_loop, "algorithm2": algorithm2_loop, "fused": fused_loop}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    rounds: dict[str, list[float]] = {name: [] for name in loops}
    sanity = {}
    try:
        for name, loop in loops.items():
            warm, _ = _timed(lambda loop=loop: loop(config.warmup_steps))
            log.info(
                "%s loop: %d warm-up steps in %.2f s; %d rounds of %d steps at batch %d (about %.0f s each)",
                name,
                config.warmup_steps,
                warm,
                config.rounds,
                config.steps,
                config.batch,
                warm / config.warmup_steps * config.steps,
            )
        for r in range(config.rounds):
            names = list(loops)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds, samples = _timed(lambda loop=loops[name]: loop(config.steps))
                rounds[name].append(seconds)
                sanity[name] = sample_sanity(samples)
                log.info(
                    "round %d/%d, %s loop: %.2f s, %.3f images/s",
                    r + 1,
                    config.rounds,
                    name,
                    seconds,
                    config.batch / seconds,
                )
        for name in loops:
            if not sanity[name]["plausible"]:
                hint = " (expected on a strided schedule: no x̂₀ clipping)" if name == "algorithm2" else ""
                log.warning("%s loop: implausible images%s: %s", name, hint, sanity[name])
        log.info("engine step: %d calls at batch %d", config.engine_step_calls, config.batch)
        step_median, step_times = _engine_step_seconds(runner, config)
        log.info("engine step: median %.2f ms", step_median * 1000)
    finally:
        torch.set_num_threads(previous_threads)

    speeds = speed_report({n: float(np.median(t)) for n, t in rounds.items()}, step_median, config.batch, config.steps)
    return {
        "what": "images/s of three DDPM sampling loops: same UNet weights, batch, steps and threads",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {
            "model": runner.name,
            "model_dir": str(config.model_dir),
            "batch": config.batch,
            "steps": config.steps,
            "num_timesteps": spec.num_timesteps,
            "threads": config.threads,
            "warmup_steps": config.warmup_steps,
            "engine_step_calls": config.engine_step_calls,
            "rounds": config.rounds,
            "seed": config.seed,
            "sampler": "DDPM ancestral; strided (respaced betas) when steps < num_timesteps",
            "loops": {
                "diffusers": "diffusers DDPMScheduler (fixed_small, clip_sample, epsilon; its default 'leading' "
                "spacing when steps < num_timesteps) + our UNet, torch eager, inference_mode",
                "algorithm2": "Ho et al. Algorithm 2 verbatim (sigma_t^2 = beta_t, no x0 clipping) + our UNet, "
                "torch eager, inference_mode",
                "fused": "ModelRunner.generate_float: fused ONNX step graph on onnxruntime, DDPM, fixed_small, "
                "x0 clipped, counter-based noise",
            },
            "engine_providers": getattr(runner.engine, "providers", None),
        },
        "machine": {
            **machine,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "versions": _versions(),
        **speeds,
        "seconds_by_round": rounds,  # "seconds" holds their medians
        "engine_step_seconds_all": step_times,
        "sanity": sanity,
        "all_plausible": all(s["plausible"] for s in sanity.values()),
    }


def summary(report: Mapping[str, Any]) -> str:
    """A few lines for people."""
    s, ips = report["settings"], report["images_per_second"]
    lines = [f"{s['model']}: batch {s['batch']}, {s['steps']} steps, {s['threads']} thread(s)"]
    for name in LOOPS:
        lines.append(f"  {name:<10} {ips[name]:8.3f} images/s  ({report['seconds'][name]:.2f} s)")
    lines.append(
        f"  fused speedup: {report['speedup_vs_diffusers']:.2f}x vs diffusers, "
        f"{report['speedup_vs_algorithm2']:.2f}x vs Algorithm 2; engine step median "
        f"{report['engine_step_seconds'] * 1000:.2f} ms, loop overhead {report['loop_overhead']:.3f}"
    )
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], path: Path) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def plot_report(report: Mapping[str, Any], out: Path) -> Path:
    """A PNG bar chart of images/s per loop, annotated with the values and the fused speedups."""
    s, ips = report["settings"], report["images_per_second"]
    labels = {
        "diffusers": "diffusers\nDDPMScheduler",
        "algorithm2": "Algorithm 2\n(torch eager)",
        "fused": "genserve\nfused (ORT)",
    }
    with images.saved_figure(out, figsize=(7, 4.5)) as (fig, ax):
        values = [ips[name] for name in LOOPS]
        bars = ax.bar([labels[name] for name in LOOPS], values, color=["tab:gray", "tab:orange", "tab:blue"])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value:.3g}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_ylim(0, max(values) * 1.15)  # room for the value labels under the title
        ax.set_ylabel("images / s (higher is better)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(
            f"{s['model']}: batch {s['batch']}, {s['steps']} DDPM steps, {s['threads']} thread(s)\n"
            f"fused {report['speedup_vs_diffusers']:.2f}x diffusers, {report['speedup_vs_algorithm2']:.2f}x "
            f"Algorithm 2; loop overhead {report['loop_overhead']:.3f}",
            fontsize=10,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sampler",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", default="ddpm-mnist", metavar="NAME", help="diffusion model folder (default ddpm-mnist)"
    )
    parser.add_argument(
        "--models", type=Path, default=ROOT / "models", metavar="DIR", help="model repository (default models/)"
    )
    parser.add_argument("--batch", type=int, default=16, metavar="B", help="images per loop (default 16)")
    parser.add_argument(
        "--steps", type=int, default=1000, metavar="K", help="sampling steps (default 1000, the full schedule)"
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch and onnxruntime intra-op threads (default: os.cpu_count())"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, metavar="R", help="interleaved timings of each loop; medians kept (default 3)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="OUT.json",
        help="report path; the bar chart goes next to it as OUT.png (default: a new results/runs/<date>-sampler/)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.json = args.json or new_output("sampler")  # a new run folder each run
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        threads = {"threads": args.threads} if args.threads else {}  # default: os.cpu_count()
        config = SamplerBenchConfig(
            args.models / args.model, batch=args.batch, steps=args.steps, rounds=args.rounds, **threads
        )
        report = run_sampler_benchmark(config, command=shlex.join(["python", "-m", "benchmarks.sampler", *argv]))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    except ImportError as exc:  # diffusers, the optional [bench] extra
        log.error("%s", exc)
        return 1
    print(summary(report))
    print(f"wrote {write_report(report, args.json)}")
    print(f"wrote {plot_report(report, args.json.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
