"""PyTorch engines: the torch backend (eager, CPU: the reference) and the cuda backend.

The network is rebuilt from the model folder's ``weights/`` (the same network its ``model.onnx``
was exported from) and run on a device, in a precision (``config.Precision``: autocast for
bf16/fp16, TF32 matrix units for tf32, strict fp32 otherwise). On a CUDA device:

- **Batch buckets and CUDA graphs.** Batches run in the smallest bucket (1, 2, 4, ... up to the
  model's ``max_batch_size``) that holds them, padded; each bucket's forward pass is captured
  once at load as a CUDA graph over static buffers, after a warm-up, and replayed per call
  (``cuda_graphs=False`` keeps eager mode, for comparison). ``compile=True`` runs
  ``torch.compile`` (Inductor) before the capture.
- **One stream per engine**, pinned host buffers for the copies in and out, the uint8
  conversion on the device (``run_uint8``), one device-to-host copy per call.
- **Diffusion state on the device** (``TorchSlots``, the ``slots.SlotState`` contract): x, the
  per-slot schedules, seeds, image indices and step counters are device tensors; a step gathers
  each slot's timestep and coefficients by its own counter, draws the counter-based noise on the
  device (``noise.gaussian_torch``, the CPU's bits) and updates x in place, so a step needs
  nothing from the host and never synchronises. Joins and moves are index operations; images
  come back, as uint8, only for rows the host asks for (it knows from step counts which finished).

On the CPU the same code runs without graphs (``pad_to_buckets`` pads anyway, for tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genserve import noise
from genserve.serving.config import Precision
from genserve.serving.slots import REPLAY_STEPS, conditioning_specs, state_shape
from genserve.signature import Signature

log = logging.getLogger(__name__)

_AUTOCAST = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself."""
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` rows."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"batch of {n} exceeds the largest bucket, {buckets[-1]}")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``images.to_uint8`` on the device: (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), round-half-even."""
    return torch.clamp(torch.round((x.float() + 1.0) * 127.5), 0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def set_precision(precision: Precision) -> None:
    """TF32 is a process-wide switch in torch: on for ``tf32``, off otherwise (strict fp32 parity)."""
    tf32 = precision is Precision.TF32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


class TorchEngine:
    """One model's network on one device: ``run`` (NumPy in and out), ``run_uint8``, ``open_slots``."""

    def __init__(
        self,
        weights_dir: Path,
        signature: Signature,
        max_batch_size: int,
        view: str | None = None,
        device: str = "cpu",
        precision: Precision = Precision.FP32,
        cuda_graphs: bool = False,
        compile: bool = False,
        pad_to_buckets: bool | None = None,
    ):
        from genserve.nets import load_checkpoint
        from genserve.nets.graphs import DEFAULT_VIEW, servable_module

        started = time.perf_counter()
        self.signature = signature
        self.max_batch_size = max_batch_size
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda and not torch.cuda.is_available():
            from genserve.serving.errors import Unavailable

            raise Unavailable(f"the cuda backend needs a CUDA device; torch {torch.__version__} sees none")
        self.precision = precision
        self.cuda_graphs = cuda_graphs and self.on_cuda
        pad = self.cuda_graphs if pad_to_buckets is None else pad_to_buckets
        self.buckets = bucket_sizes(max_batch_size) if pad else None
        set_precision(precision)
        net, meta = load_checkpoint(weights_dir)
        module, _ = servable_module(net, meta["family"], view or DEFAULT_VIEW)  # the graph export wrote
        self.module = module.to(self.device).eval()
        if compile:
            self.module = torch.compile(self.module, dynamic=False)
        self.stream = torch.cuda.Stream(self.device) if self.on_cuda else None
        self.graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        # Static device inputs at the largest batch (buckets run on their leading rows); the CPU
        # reference without buckets runs straight from the feeds and needs none.
        static = self.buckets is not None or self.on_cuda
        self._inputs = {
            spec.name: torch.zeros(spec.concrete(max_batch_size), dtype=_dtype(spec.dtype), device=self.device)
            for spec in (signature.inputs if static else ())
        }
        self._staging = (
            {  # pinned host copies of the inputs, so the copy in is asynchronous
                name: torch.zeros(t.shape, dtype=t.dtype, pin_memory=True) for name, t in self._inputs.items()
            }
            if self.on_cuda
            else None
        )
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # Whatever runs on this engine's stream holds it: a capture must see no other thread's work.
        self.lock = threading.RLock()
        self.graph_seconds = 0.0
        self.load_seconds = time.perf_counter() - started

    @property
    def graph_count(self) -> int:
        """One-pass CUDA graphs captured so far (a diffusion model's belong to its slot states)."""
        return len(self._graphs)

    # --- running the graph -------------------------------------------------------------------

    @contextlib.contextmanager
    def stream_context(self):
        """This engine's stream (on a CUDA device), held against other threads."""
        with self.lock, torch.cuda.stream(self.stream) if self.on_cuda else contextlib.nullcontext():
            yield

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """The module under this engine's precision; float32 out."""
        dtype = _AUTOCAST.get(self.precision)
        autocast = (
            torch.autocast(self.device.type, dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            return self.module(*args).float()

    def capture(self, fn, warm_up: int = 2) -> torch.cuda.CUDAGraph:
        """A CUDA graph of ``fn()`` after ``warm_up`` eager runs on this engine's stream."""
        started = time.perf_counter()
        with self.lock:
            with self.stream_context():
                for _ in range(warm_up):
                    fn()
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # Graphs share one memory pool: each one's intermediates are dead when it ends, and every
            # graph of this engine replays on its one stream, so no two are ever live together.
            with torch.cuda.graph(graph, pool=self.graph_pool, stream=self.stream):
                fn()
            self.stream.synchronize()
        self.graph_seconds += time.perf_counter() - started
        return graph

    def capture_buckets(self) -> None:
        """The one-pass graph of every bucket (server start; the first call of a bucket otherwise)."""
        for b in self.buckets or ():
            self._bucket_graph(b)

    def _bucket_graph(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        if b not in self._graphs:
            out: list[torch.Tensor] = []
            args = [t[:b] for t in self._inputs.values()]
            graph = self.capture(lambda: out.append(self.forward(*args)))
            self._graphs[b] = (graph, out[-1])
        return self._graphs[b]

    def _run_device(self, feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, int]:
        """The first output on the device for a NumPy batch: (rows [0, n) of it valid, n)."""
        n = len(next(iter(feeds.values())))
        if not self._inputs:  # the CPU reference: straight through
            args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.signature.input_names]
            return self.forward(*args), n
        b = bucket_for(n, self.buckets) if self.buckets else n
        with self.stream_context():
            for name, static in self._inputs.items():
                if self._staging is not None:
                    staged = self._staging[name][:n]
                    staged.numpy()[...] = feeds[name]
                    static[:n].copy_(staged, non_blocking=True)
                else:
                    static[:n].copy_(torch.from_numpy(np.ascontiguousarray(feeds[name])))
            if self.cuda_graphs:
                graph, out = self._bucket_graph(b)
                graph.replay()
            else:
                out = self.forward(*(t[:b] for t in self._inputs.values()))
        return out[:n], n

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:  # the output may be a graph's static buffer
            out, _ = self._run_device(feeds)
            return {self.signature.output_names[0]: self._to_host(out)}

    def run_uint8(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output as images, converted on the device: uint8 (N, H, W, C)."""
        with self.stream_context():
            out, _ = self._run_device(feeds)
            return self._to_host(to_uint8(out))

    def _to_host(self, t: torch.Tensor) -> np.ndarray:
        """One device-to-host copy (the engine's stream), then wait for it."""
        if not self.on_cuda:
            return t.detach().numpy().copy() if t.device.type == "cpu" else t.cpu().numpy()
        with self.stream_context():
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
        self.stream.synchronize()
        return host.numpy()

    # --- iterative models ----------------------------------------------------------------------

    def open_slots(self, capacity: int, max_steps: int) -> TorchSlots:
        return TorchSlots(self, capacity, max_steps)


class TorchSlots:
    """``slots.SlotState`` in the engine's device memory (see the module docstring)."""

    def __init__(self, engine: TorchEngine, capacity: int, max_steps: int):
        self.engine = engine
        self.capacity = capacity
        self.shape = state_shape(engine.signature)
        self.max_steps = max_steps
        dev = engine.device
        s = capacity
        self.x = torch.zeros((s, *self.shape), dtype=torch.float32, device=dev)
        self.seed = torch.zeros(s, dtype=torch.int64, device=dev)
        self.index = torch.zeros(s, dtype=torch.int64, device=dev)
        self.steps_done = torch.zeros(s, dtype=torch.int64, device=dev)
        self.timesteps = torch.zeros((s, max_steps), dtype=torch.int64, device=dev)  # row i: slot i's schedule
        self.coefs = torch.zeros((s, max_steps, 6), dtype=torch.float32, device=dev)
        self.conditioning = {
            c.name: torch.zeros(s, dtype=_dtype(c.dtype), device=dev) for c in conditioning_specs(engine.signature)
        }
        self._rows = (self.x, self.seed, self.index, self.steps_done, self.timesteps, self.coefs)
        self._rows += tuple(self.conditioning.values())
        self._arange = torch.arange(s, device=dev)
        self.buckets = tuple(b for b in engine.buckets if b < capacity) + (capacity,) if engine.buckets else None
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        if engine.cuda_graphs:
            started = time.perf_counter()
            for b in self.buckets:
                for count in (1, REPLAY_STEPS):
                    self._graphs[b, count] = engine.capture(lambda b=b, count=count: self._advance(b, count))
            for t in self._rows:  # the warm-ups stepped garbage
                t.zero_()
            log.info(
                "captured %d CUDA graphs (buckets %s, 1 and %d steps) in %.2f s",
                len(self._graphs),
                list(self.buckets),
                REPLAY_STEPS,
                time.perf_counter() - started,
            )

    def _advance(self, b: int, count: int) -> None:
        """``count`` steps of rows [0, b): device work only."""
        rows = self._arange[:b]
        cond = [t[:b] for t in self.conditioning.values()]
        for _ in range(count):
            k = self.steps_done[:b]
            at = k.clamp(max=self.max_steps - 1)  # padding rows may have run past their schedule
            z = noise.gaussian_torch(self.seed[:b], self.index[:b], k + 1, self.shape)  # step k draws k + 1
            out = self.engine.forward(self.x[:b], self.timesteps[rows, at], self.coefs[rows, at], z, *cond)
            self.x[:b].copy_(out)
            self.steps_done[:b] += 1

    def join(self, row, seeds, index, timesteps, coefs, conditioning) -> None:
        k, steps = len(index), len(timesteps)
        rows = slice(row, row + k)
        dev = self.engine.device
        with self.engine.stream_context():
            seed = torch.as_tensor(np.asarray(seeds, np.int64)).to(dev, non_blocking=True)
            idx = torch.as_tensor(np.asarray(index, np.int64)).to(dev, non_blocking=True)
            self.seed[rows] = seed
            self.index[rows] = idx
            self.steps_done[rows] = 0
            self.x[rows] = noise.gaussian_torch(seed, idx, torch.full_like(idx, noise.INITIAL_STEP), self.shape)
            self.timesteps[rows, :steps] = torch.as_tensor(np.asarray(timesteps, np.int64)).to(dev)
            self.coefs[rows, :steps] = torch.as_tensor(np.asarray(coefs, np.float32)).to(dev)
            for name, values in conditioning.items():
                target = self.conditioning[name]
                target[rows] = torch.as_tensor(np.asarray(values)).to(dev, target.dtype)

    def step(self, n: int, count: int = 1) -> None:
        b = bucket_for(n, self.buckets) if self.buckets else n
        with self.engine.stream_context():
            if not self._graphs:
                self._advance(b, count)
                return
            done = 0
            while done < count:
                chunk = REPLAY_STEPS if count - done >= REPLAY_STEPS else 1
                self._graphs[b, chunk].replay()
                done += chunk

    def move(self, src: int, dst: int) -> None:
        with self.engine.stream_context():
            for t in self._rows:
                t[dst] = t[src]

    def images(self, rows: Sequence[int]) -> np.ndarray:
        with self.engine.stream_context():
            picked = to_uint8(self.x[torch.as_tensor(list(rows), device=self.engine.device)])
        return self.engine._to_host(picked)

    def values(self, rows: Sequence[int]) -> np.ndarray:
        with self.engine.stream_context():
            picked = self.x[torch.as_tensor(list(rows), device=self.engine.device)]
        return self.engine._to_host(picked)


# --- profiling (--engine-profile) -----------------------------------------------------------------

_profiler: tuple[torch.profiler.profile, Path] | None = None  # the process's, and where it exports


def start_profiler(directory: Path) -> None:
    """Start torch.profiler for the whole process: CPU operators on every thread (engine calls run on
    the server's worker threads, which a default profiler does not see), and CUDA kernels when
    there is a device. One profiler: torch keeps one active at a time."""
    global _profiler
    if _profiler is not None:
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    profiler = profile(activities=activities, experimental_config=every_thread)
    profiler.start()
    directory.mkdir(parents=True, exist_ok=True)
    _profiler = (profiler, directory / f"torch-{os.getpid()}.json")
    log.info("torch profiler on (%s), exporting to %s at stop", ", ".join(a.name for a in activities), _profiler[1])


def stop_profiler() -> Path | None:
    """Stop the profiler and export its Chrome trace; the path, or None if none was running."""
    global _profiler
    if _profiler is None:
        return None
    profiler, path = _profiler
    _profiler = None
    profiler.stop()
    profiler.export_chrome_trace(str(path))
    return path


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "int64": torch.int64}[name]
