"""Engines: one interface over ONNX Runtime, PyTorch (CPU reference and CUDA) and TensorRT.

An engine runs one batch of a model's graph: ``run(feeds) -> outputs``, NumPy in and out,
with the names, dtypes and shapes of the model's ``Signature``. It knows nothing about
requests, samplers or batching. Iterative models (diffusion) are stepped through a slot state
the backend owns (``slots.py``): host memory here, device memory for the torch/cuda backends
(``torch_engine.py``).
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from genserve.manifest import ONNX_FILE, WEIGHTS_DIR, Manifest
from genserve.serving.config import Backend, EngineOptions
from genserve.serving.errors import Unavailable
from genserve.signature import Signature

log = logging.getLogger(__name__)


class Engine(Protocol):
    signature: Signature
    max_batch_size: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRuntimeEngine:
    """ONNX Runtime session; CUDA provider first where onnxruntime-gpu finds a GPU.

    ``io_binding`` (default: on exactly when CUDA is the first provider) runs each call through an
    ``IOBinding``: NumPy inputs bound as CPU tensors, outputs bound to the CPU, then copied out.
    Forcing it on with the CPU provider tests that path where there is no GPU.

    ``profile_prefix``: ONNX Runtime's profiler on, writing ``<prefix>_<date>.json`` (one event per
    operator run) when ``end_profiling`` is called.
    """

    def __init__(
        self,
        onnx_path: Path,
        signature: Signature,
        max_batch_size: int,
        intra_op_threads: int = 0,
        io_binding: bool | None = None,
        profile_prefix: Path | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise Unavailable(
                "ONNX Runtime is not installed: pip install onnxruntime (or onnxruntime-gpu for its CUDA provider)"
            ) from exc

        self.signature = signature
        self.max_batch_size = max_batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads  # 0 = one per physical core
        # Idle intra-op threads would spin between calls, taking the cores the gRPC event loop and
        # the batcher need: in a server, requests arrive between engine calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.profiling = profile_prefix is not None
        if profile_prefix is not None:
            profile_prefix.parent.mkdir(parents=True, exist_ok=True)
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_prefix)
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.io_binding = self.providers[0] == "CUDAExecutionProvider" if io_binding is None else io_binding
        log.info("onnxruntime session for %s on %s (I/O binding %s)", onnx_path, self.providers, self.io_binding)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.io_binding:
            outputs = self._run_bound(feeds)
        else:
            outputs = self.session.run(self.signature.output_names, feeds)
        return dict(zip(self.signature.output_names, outputs, strict=True))

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # One binding per call: calls may overlap, and a binding holds its inputs' buffers.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name in self.signature.output_names:
            binding.bind_output(name)  # on the CPU; ONNX Runtime allocates it at the call's shape
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()  # in binding order, the signature's

    def end_profiling(self) -> Path | None:
        """Write the profile (when profiling) and return its path; the session runs on unprofiled."""
        if not self.profiling:
            return None
        self.profiling = False
        return Path(self.session.end_profiling())


_profile_ids = itertools.count()  # engines of one process, so that two sessions never share a file


def start_profiling(backend: Backend, directory: Path) -> None:
    """The torch profiler of the torch and cuda backends, once every model is loaded (their CUDA
    graphs captured): one for the process (torch allows one), recording every thread. ONNX
    Runtime's starts with each session (``create_engine``)."""
    if backend in (Backend.TORCH, Backend.CUDA):
        from genserve.serving.torch_engine import start_profiler

        start_profiler(directory)
    elif backend is Backend.TENSORRT:
        log.warning("--engine-profile: the tensorrt backend has no profiler here; no engine profile is written")


def end_profiling(engines: Iterable[Engine]) -> list[Path]:
    """Write every engine profile started by ``engine_profile`` (server stop); their paths."""
    written = []
    for engine in engines:
        end = getattr(engine, "end_profiling", None)
        path = end() if end is not None else None
        if path is not None:
            written.append(path)
    torch_engine = sys.modules.get("genserve.serving.torch_engine")  # loaded only by those backends
    if torch_engine is not None and (path := torch_engine.stop_profiler()) is not None:
        written.append(path)
    for path in written:
        log.info("engine profile written: %s", path)
    return written


def create_graph_engine(
    folder: Path,
    manifest: Manifest,
    name: str,
    backend: Backend,
    intra_op_threads: int = 0,
    options: EngineOptions | None = None,
) -> Engine:
    """An engine for the folder's extra graph ``name`` (``Manifest.graphs``): the torch backends cut
    it from the checkpoint by its view; the others run its ONNX file in ONNX Runtime (TensorRT
    engines are built for ``model.onnx`` only, and these graphs are small or run once per image)."""
    options = options or EngineOptions()
    graph = manifest.graphs[name]
    if backend in (Backend.TORCH, Backend.CUDA):
        from genserve.serving.torch_engine import TorchEngine

        return TorchEngine(
            folder / WEIGHTS_DIR,
            graph.signature,
            manifest.max_batch_size,
            graph.view,
            device=options.device or ("cuda" if backend is Backend.CUDA else "cpu"),
            precision=options.precision,
            cuda_graphs=False,
            compile=False,
        )
    return OnnxRuntimeEngine(folder / graph.file, graph.signature, manifest.max_batch_size, intra_op_threads)


def create_engine(
    folder: Path,
    manifest: Manifest,
    backend: Backend,
    intra_op_threads: int = 0,
    options: EngineOptions | None = None,
) -> Engine:
    """One engine for a model folder; ``intra_op_threads`` (ONNX Runtime only) 0 = one per core."""
    options = options or EngineOptions()
    if backend is Backend.ONNXRUNTIME:
        prefix = None
        if options.engine_profile is not None:
            prefix = options.engine_profile / f"onnxruntime-{manifest.name}-{next(_profile_ids)}"
        return OnnxRuntimeEngine(
            folder / ONNX_FILE, manifest.signature, manifest.max_batch_size, intra_op_threads, profile_prefix=prefix
        )
    if backend in (Backend.TORCH, Backend.CUDA):
        weights = folder / WEIGHTS_DIR
        if not (weights / "config.json").is_file():
            raise Unavailable(f"model {manifest.name} has no {WEIGHTS_DIR}/ checkpoint for the {backend.value} backend")
        from genserve.serving.torch_engine import TorchEngine

        cuda = backend is Backend.CUDA
        engine = TorchEngine(
            weights,
            manifest.signature,
            manifest.max_batch_size,
            manifest.source.get("view"),
            device=options.device or ("cuda" if cuda else "cpu"),
            precision=options.precision,
            cuda_graphs=cuda and options.cuda_graphs,
            compile=options.compile,
        )
        if not manifest.kind.iterative:  # an iterative model's graphs belong to its slot states
            engine.capture_buckets()
        log.info(
            "%s on %s (%s): loaded in %.2f s, %d CUDA graph(s) captured in %.2f s",
            manifest.name,
            engine.device,
            options.precision.value,
            engine.load_seconds,
            engine.graph_count,
            engine.graph_seconds,
        )
        return engine
    if backend is Backend.TENSORRT:
        from genserve.serving.tensorrt_engine import TensorRTEngine

        return TensorRTEngine.for_model(folder, manifest, options.precision)
    raise ValueError(f"unknown backend {backend}")
