"""The GPU suite: every GPU target of the cuda backend, measured in one run on one device.

    bash benchmarks/gpu/suite.sh OUT_DIR          # on the GPU machine (after prepare.sh here)
    bash benchmarks/gpu/suite.sh --dry OUT_DIR    # the same code on the CPU, tiny sizes (the test suite)

Parts, each a section of OUT_DIR/suite.json and a table in OUT_DIR/suite.md:

a. parity of the cuda engine (fp32) with ONNX Runtime (CPU) for every served graph (max abs
   error, target <= 1e-3), and bf16/fp16 sample quality against fp32 (the judge's confident
   fraction and FID within 5%);
b. ``ddpm-mnist``, 1000-step DDPM: wall time at batch 1 (target <= 0.5 s), images/s at batch 256
   and the fraction of the GPU's bf16 peak, from FLOPs counted by ``torch.utils.flop_counter``;
   the same at batch 1 with ``torch.compile`` before capture, and its load time (GPU only);
c. the fused sampler against diffusers' ``DDPMScheduler`` loop with the same UNet in eager
   PyTorch, 1000 steps, batch 1 and 16 (target >= 10x);
d. served over gRPC: ``dcgan-mnist`` dynamic batching at concurrency 32 against
   ``--max-batch-size 1`` (>= 4x throughput; p99 at concurrency 1 <= 1.2x), ``ddpm-mnist``
   step-level against request-level batching at 70% Poisson load (mean <= 0.5x, p99 <= 0.7x);
e. peak GPU memory per model and batch bucket.

Run as a script (``python benchmarks/gpu/suite.py``), not ``-m``: the checkout's ``genserve/``
folder would shadow the installed package on the GPU machine, whose genserve is a wheel.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genserve.manifest import WEIGHTS_DIR, Manifest, discover
from genserve.serving import native
from genserve.serving.config import Precision
from genserve.serving.domain import GenerateRequest
from genserve.serving.engines import OnnxRuntimeEngine
from genserve.serving.runner import ModelRunner
from genserve.serving.torch_engine import TorchEngine, bucket_sizes

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ (last: the checkout's genserve/ folder must not shadow the package)
    sys.path.append(str(REPO))
DDPM, DCGAN = "ddpm-mnist", "dcgan-mnist"
BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}  # dense bf16 FLOP/s, by name fragment


@dataclasses.dataclass(frozen=True)
class Sizes:
    device: str
    graphs: bool
    parity_batches: tuple[int, ...] = (1, 7)
    steps: int = 1000
    big_batch: int = 256
    diffusers_batches: tuple[int, ...] = (1, 16)
    quality_samples: int = 500
    quality_steps: int | None = None  # None: each model's default sampling
    load_seconds: float = 15.0
    poisson_seconds: float = 60.0
    ddpm_load_steps: tuple[int, ...] = (20, 50, 100)
    repeats: int = 3  # timed runs per speed figure; the median is kept


FULL = Sizes(device="cuda", graphs=True)
DRY = Sizes(
    device="cpu",
    graphs=False,
    parity_batches=(1, 2),
    steps=4,
    big_batch=4,
    diffusers_batches=(1, 2),
    quality_samples=12,
    quality_steps=4,
    load_seconds=2.0,
    poisson_seconds=3.0,
    ddpm_load_steps=(4,),
    repeats=1,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` runs of ``fn`` after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def target(value: float | None, limit: float, at_most: bool, text: str) -> dict:
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, "target": f"{'<=' if at_most else '>='} {limit:g}", "met": met, "what": text}


def device_engine(folder: Path, sizes: Sizes, precision=Precision.FP32, max_batch: int | None = None) -> TorchEngine:
    manifest = Manifest.load(folder)
    return TorchEngine(
        folder / WEIGHTS_DIR,
        manifest.signature,
        max_batch or manifest.max_batch_size,
        manifest.source.get("view"),
        device=sizes.device,
        precision=precision,
        cuda_graphs=sizes.graphs,
    )


# --- a. parity and precision -----------------------------------------------------------------------


def part_parity(models: Path, sizes: Sizes) -> dict:
    rows = []
    for folder in discover(models):
        manifest = Manifest.load(folder)
        if not (folder / WEIGHTS_DIR / "config.json").is_file():
            rows.append({"model": manifest.name, "skipped": "no weights/ checkpoint"})
            continue
        ort = OnnxRuntimeEngine(folder / "model.onnx", manifest.signature, manifest.max_batch_size)
        engine = device_engine(folder, sizes)
        errors = {}
        for batch in sizes.parity_batches:
            feeds = manifest.signature.sample_inputs(batch, seed=batch)
            name = manifest.signature.output_names[0]
            errors[batch] = float(np.abs(engine.run(feeds)[name] - ort.run(feeds)[name]).max())
        worst = max(errors.values())
        what = f"{manifest.name}: cuda fp32 vs ONNX Runtime, max abs error"
        rows.append({"model": manifest.name, "max_abs_error": errors, **target(worst, 1e-3, True, what)})
        log(f"parity {manifest.name}: max abs error {worst:.2e}")
    return {"graphs": rows, "all_met": all(r.get("met") for r in rows if "met" in r)}


def part_precision(models: Path, sizes: Sizes) -> dict:
    from genserve.training.evaluate import Evaluator

    evaluator = Evaluator()
    out = {}
    for name in (DDPM, DCGAN):
        quality = {}
        for precision in (Precision.FP32, Precision.BF16, Precision.FP16):
            runner = ModelRunner(models / name, engine=device_engine(models / name, sizes, precision))
            started = time.perf_counter()
            samples = []
            for chunk, start in enumerate(range(0, sizes.quality_samples, 250)):
                n = min(250, sizes.quality_samples - start)
                steps = sizes.quality_steps if name == DDPM else None
                request = GenerateRequest(name, n, seed=2026 + chunk, steps=steps)
                samples.append(runner.generate(request))
            report = evaluator.evaluate(np.concatenate(samples))
            quality[precision.value] = {
                "confident_fraction": report.confident_fraction,
                "fid": report.fid,
                "fid_floor": report.fid_floor,
                "seconds": round(time.perf_counter() - started, 2),
            }
            log(f"quality {name} {precision.value}: {quality[precision.value]}")
        ref = quality["fp32"]
        for p in ("bf16", "fp16"):
            q = quality[p]
            for key, metric in (("confident_change", "confident_fraction"), ("fid_change", "fid")):
                q[key] = round(abs(q[metric] - ref[metric]) / max(ref[metric], 1e-9), 4)
            what = f"{name} {p} vs fp32: the larger relative change of confident fraction and FID"
            q.update(target(max(q["confident_change"], q["fid_change"]), 0.05, True, what))
        out[name] = quality
    return {"samples": sizes.quality_samples, "seed": 2026, "models": out}


# --- b, c. the sampler's speed --------------------------------------------------------------------


def step_flops(engine: TorchEngine, batch: int) -> int:
    """FLOPs of one step graph call at ``batch`` (eager, counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    feeds = engine.signature.sample_inputs(batch)
    args = [torch.from_numpy(feeds[n]).to(engine.device) for n in engine.signature.input_names]
    with FlopCounterMode(display=False) as counter:
        engine.forward(*args)
    return int(counter.get_total_flops())


def measured_bf16_peak(device: str) -> float | None:
    """FLOP/s of an 8192^3 bf16 matrix product (the best this device shows us)."""
    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    seconds = timed(lambda: [a @ b for _ in range(10)], device, 3) / 10
    return 2 * 8192**3 / seconds


def part_sampler_speed(models: Path, sizes: Sizes) -> dict:
    folder = models / DDPM
    out: dict = {"steps": sizes.steps}
    for precision in (Precision.FP32, Precision.BF16):
        engine = device_engine(folder, sizes, precision, max_batch=sizes.big_batch)
        runner = ModelRunner(folder, engine=engine)
        one = GenerateRequest(DDPM, 1, seed=0, steps=sizes.steps)
        big = GenerateRequest(DDPM, sizes.big_batch, seed=0, steps=sizes.steps)
        b1 = timed(lambda r=runner, q=one: r.generate(q), sizes.device, sizes.repeats)
        bb = timed(lambda r=runner, q=big: r.generate(q), sizes.device, sizes.repeats)
        flops = step_flops(engine, sizes.big_batch) * sizes.steps
        out[precision.value] = {
            "batch1_seconds": round(b1, 4),
            f"batch{sizes.big_batch}_seconds": round(bb, 4),
            f"batch{sizes.big_batch}_images_per_second": round(sizes.big_batch / bb, 1),
            "achieved_flops_per_second": flops / bb,
        }
        log(f"ddpm {precision.value}: batch 1 {b1:.3f} s, batch {sizes.big_batch} {sizes.big_batch / bb:.1f} images/s")
    name = torch.cuda.get_device_name() if sizes.device.startswith("cuda") else platform.processor() or "cpu"
    spec = next((v for k, v in BF16_PEAK.items() if k in name), None)
    measured = measured_bf16_peak(sizes.device)
    achieved = out["bf16"]["achieved_flops_per_second"]
    out["bf16_peak_spec"] = spec
    out["bf16_peak_measured_matmul"] = measured
    out["fraction_of_bf16_peak"] = None if spec is None else round(achieved / spec, 4)
    out["fraction_of_measured_peak"] = None if measured is None else round(achieved / measured, 4)
    best_b1 = min(out[p]["batch1_seconds"] for p in ("fp32", "bf16"))
    out["targets"] = {
        "batch1_wall_time": target(best_b1, 0.5, True, f"{sizes.steps}-step DDPM, batch 1, seconds"),
        "fraction_of_bf16_peak": target(out["fraction_of_bf16_peak"], 0.30, False, f"bf16, batch {sizes.big_batch}"),
    }
    return out


def part_compile(models: Path, sizes: Sizes) -> dict:
    """torch.compile before capture, against the plain graphs: batch 1 only (one bucket, one compile)."""
    if not sizes.device.startswith("cuda"):
        return {"skipped": "torch.compile is measured on the GPU only (Inductor's CPU build is minutes here)"}
    folder = models / DDPM
    request = GenerateRequest(DDPM, 1, seed=0, steps=sizes.steps)
    out = {}
    for compiled in (False, True):
        started = time.perf_counter()
        manifest = Manifest.load(folder)
        engine = TorchEngine(
            folder / WEIGHTS_DIR, manifest.signature, 1, device=sizes.device, cuda_graphs=sizes.graphs, compile=compiled
        )
        runner = ModelRunner(folder, engine=engine)
        runner.generate(request)  # compile and capture
        load = time.perf_counter() - started
        seconds = timed(lambda r=runner: r.generate(request), sizes.device, sizes.repeats)
        out["compiled" if compiled else "plain"] = {"load_seconds": round(load, 1), "batch1_seconds": round(seconds, 4)}
        log(f"compile={compiled}: load {load:.1f} s, batch 1 {seconds:.3f} s")
    out["speedup"] = round(out["plain"]["batch1_seconds"] / out["compiled"]["batch1_seconds"], 3)
    return out


def part_vs_diffusers(models: Path, sizes: Sizes) -> dict:
    from benchmarks.sampler import diffusers_sample, diffusers_scheduler, require_diffusers
    from genserve.nets import load_checkpoint

    try:
        require_diffusers()
    except ImportError as exc:
        return {"skipped": str(exc)}
    folder = models / DDPM
    manifest = Manifest.load(folder)
    unet, _ = load_checkpoint(folder / WEIGHTS_DIR)
    unet = unet.to(sizes.device).eval()
    scheduler = diffusers_scheduler(manifest.diffusion)
    scheduler.set_timesteps(sizes.steps)
    runner = ModelRunner(folder, engine=device_engine(folder, sizes, max_batch=max(sizes.diffusers_batches)))
    rows = []
    for batch in sizes.diffusers_batches:
        x = torch.randn((batch, *manifest.image_shape), device=sizes.device)
        generator = torch.Generator(sizes.device).manual_seed(0)
        base = timed(lambda x=x, g=generator: diffusers_sample(unet, scheduler, x, g), sizes.device, sizes.repeats)
        request = GenerateRequest(DDPM, batch, seed=0, steps=sizes.steps)
        fused = timed(lambda r=request: runner.generate_float(r), sizes.device, sizes.repeats)
        rows.append({"batch": batch, "diffusers_seconds": round(base, 4), "fused_seconds": round(fused, 4)})
        rows[-1].update(target(round(base / fused, 2), 10.0, False, f"fused vs diffusers, batch {batch}"))
        log(f"batch {batch}: diffusers {base:.3f} s, fused {fused:.3f} s, {base / fused:.1f}x")
    return {"steps": sizes.steps, "rows": rows}


# --- d. served over gRPC -----------------------------------------------------------------------------


def part_served(models: Path, sizes: Sizes) -> dict:
    from benchmarks import batching, diffusion_batching

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:  # only the two models: every model would capture its graphs
        repo = Path(tmp)
        for name in (DCGAN, DDPM):
            (repo / name).symlink_to(models / name)
        flags = ["--models", str(repo), "--backend", "cuda"] + ([] if sizes.graphs else ["--cuda-graphs", "off"])
        flags += [] if sizes.device == "cuda" else ["--device", sizes.device]
        dcgan = {
            label: batching.measure(flags + batching.CONFIGS[config], sizes.load_seconds)
            for label, config in (("batched", "batch64"), ("unbatched", "batch1"))
        }
        b, u = dcgan["batched"], dcgan["unbatched"]
        dcgan["targets"] = {
            "throughput_c32": target(
                round(b["c32"]["throughput"] / u["c32"]["throughput"], 2), 4.0, False, "batched / unbatched at 32"
            ),
            "p99_c1": target(round(b["c1"]["latency_p99"] / u["c1"]["latency_p99"], 2), 1.2, True, "p99 at 1"),
        }
        out[DCGAN] = dcgan
        ddpm, _ = diffusion_batching.compare(
            tuple(flags), sizes.ddpm_load_steps, sizes.poisson_seconds, 0.7, capacity_duration=sizes.load_seconds
        )
        ddpm["steps"] = list(sizes.ddpm_load_steps)
        ddpm["targets"] = {
            "mean": target(ddpm["mean_latency_ratio"], 0.5, True, "step / request, mean"),
            "p99": target(ddpm["p99_latency_ratio"], 0.7, True, "step / request, p99"),
        }
        out[DDPM] = ddpm
    return out


# --- e. memory -----------------------------------------------------------------------------------------


def part_memory(models: Path, sizes: Sizes) -> dict:
    if not sizes.device.startswith("cuda"):
        return {"skipped": "no CUDA device: peak memory is a GPU figure"}
    out = {}
    for name in (DCGAN, DDPM):
        folder = models / name
        manifest = Manifest.load(folder)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        engine = device_engine(folder, sizes)
        per_bucket = {}
        for b in bucket_sizes(manifest.max_batch_size):
            torch.cuda.reset_peak_memory_stats()
            engine.run(manifest.signature.sample_inputs(b))
            per_bucket[b] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        out[name] = {"peak_mib_by_bucket": per_bucket, "graph_capture_seconds": round(engine.graph_seconds, 2)}
        del engine
    return out


# --- the run ---------------------------------------------------------------------------------------------


def environment(sizes: Sizes) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "device": sizes.device,
        "grpc_transport": f"native (gRPC C++ {native.grpc_version()})"
        if native.available()
        else "grpcio: " + native.unavailable_reason(),
    }
    if sizes.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            env["driver"] = None
    try:
        commit = ["git", "-C", str(REPO), "rev-parse", "HEAD"]
        env["commit"] = subprocess.run(commit, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


PARTS = {
    "a_parity": part_parity,
    "a_precision": part_precision,
    "b_sampler_speed": part_sampler_speed,
    "b_compile": part_compile,
    "c_vs_diffusers": part_vs_diffusers,
    "d_served": part_served,
    "e_memory": part_memory,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for suite.json, suite.md and plots")
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes, no graphs: checks the script")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--only", nargs="*", choices=sorted(PARTS), help="run these parts only")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry else FULL
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"sizes": dataclasses.asdict(sizes), "environment": environment(sizes), "parts": {}}
    for key, part in PARTS.items():
        if args.only and key not in args.only:
            continue
        log(f"--- {key}")
        started = time.perf_counter()
        try:
            report["parts"][key] = part(args.models, sizes)
        except Exception as exc:  # one part's failure is reported, the others still run
            report["parts"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{key} failed: {exc!r}")
        report["parts"][key]["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "suite.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "suite.md").write_text(markdown(report))
    plot(report, args.out)
    log(f"wrote {args.out}/suite.json, suite.md")
    print(markdown(report))
    failed = [k for k, v in report["parts"].items() if "error" in v]
    return 1 if failed else 0


def targets(report: dict) -> list[tuple[str, dict]]:
    """Every (name, target row) in the report, in order."""
    rows = []

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            if "met" in node and "target" in node:
                rows.append((prefix, node))
                return
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(f"{prefix}[{i}]", v)

    walk("", report["parts"])
    return rows


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# GPU suite: {env.get('gpu', env['device'])}, torch {env['torch']}, {env['date']}",
        "",
        f"Driver {env.get('driver')}, CUDA {env.get('cuda')}, Python {env['python']}, commit {env.get('commit')}.",
        "",
        "| target | what | value | goal | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in targets(report):
        met = {True: "met", False: "missed", None: "n/a"}[row["met"]]
        value = f"{row['value']:.3g}" if isinstance(row["value"], float) else row["value"]
        lines.append(f"| {name} | {row['what']} | {value} | {row['target']} | {met} |")
    for key, part in report["parts"].items():
        if "error" in part or "skipped" in part:
            lines.append(f"\n{key}: {part.get('error') or part.get('skipped')}")
    precision = report["parts"].get("a_precision", {}).get("models", {})
    if precision:
        lines += ["", "| model | precision | confident | FID | confident change | FID change |", "| --- " * 6 + "|"]
        for model, rows in precision.items():
            for p, q in rows.items():
                lines.append(
                    f"| {model} | {p} | {q['confident_fraction']} | {q['fid']} | "
                    f"{q.get('confident_change', '')} | {q.get('fid_change', '')} |"
                )
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    from genserve import images

    rows = report["parts"].get("c_vs_diffusers", {}).get("rows")
    if rows:
        with images.saved_figure(out / "sampler.png", figsize=(6, 4)) as (fig, ax):
            x = np.arange(len(rows))
            ax.bar(x - 0.2, [r["diffusers_seconds"] for r in rows], 0.4, label="diffusers DDPMScheduler loop")
            ax.bar(x + 0.2, [r["fused_seconds"] for r in rows], 0.4, label="genserve fused step")
            ax.set_xticks(x, [f"batch {r['batch']}" for r in rows])
            ax.set_ylabel(f"seconds for {report['parts']['c_vs_diffusers']['steps']} steps")
            ax.set_yscale("log")
            ax.legend()
    memory = {k: v for k, v in report["parts"].get("e_memory", {}).items() if isinstance(v, dict)}
    if memory:
        with images.saved_figure(out / "memory.png", figsize=(6, 4)) as (fig, ax):
            for model, m in memory.items():
                buckets = sorted(m["peak_mib_by_bucket"], key=int)
                ax.plot([int(b) for b in buckets], [m["peak_mib_by_bucket"][b] for b in buckets], "o-", label=model)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch bucket")
            ax.set_ylabel("peak GPU memory (MiB)")
            ax.legend()


if __name__ == "__main__":
    sys.exit(main())
