"""Engines: one interface over ONNX Runtime, PyTorch (reference) and TensorRT.

An engine runs one batch of a model's graph: ``run(feeds) -> outputs``, NumPy in and out,
with the names, dtypes and shapes of the model's ``Signature``. It knows nothing about
requests, samplers or batching.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from genserve.manifest import ONNX_FILE, WEIGHTS_DIR, Manifest
from genserve.serving.errors import Unavailable
from genserve.signature import Signature

log = logging.getLogger(__name__)


class Backend(enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"
    TENSORRT = "tensorrt"


class Engine(Protocol):
    signature: Signature
    max_batch_size: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRuntimeEngine:
    """ONNX Runtime session; CUDA provider first where onnxruntime-gpu finds a GPU."""

    def __init__(self, onnx_path: Path, signature: Signature, max_batch_size: int, intra_op_threads: int = 0):
        import onnxruntime as ort

        self.signature = signature
        self.max_batch_size = max_batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads  # 0 = one per physical core
        # Idle intra-op threads would spin between calls, taking the cores the gRPC event loop and
        # the batcher need: in a server, requests arrive between engine calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.providers = self.session.get_providers()
        log.info("onnxruntime session for %s on %s", onnx_path, self.providers)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.signature.output_names, feeds)
        return dict(zip(self.signature.output_names, outputs, strict=True))


class TorchEngine:
    """The network rebuilt from the model folder's checkpoint, run in PyTorch eager (reference)."""

    def __init__(self, weights_dir: Path, signature: Signature, max_batch_size: int, view: str | None = None):
        import torch

        from genserve.nets import load_checkpoint
        from genserve.nets.graphs import DEFAULT_VIEW, servable_module

        self._torch = torch
        self.signature = signature
        self.max_batch_size = max_batch_size
        net, meta = load_checkpoint(weights_dir)
        self.module, _ = servable_module(net, meta["family"], view or DEFAULT_VIEW)  # the graph export wrote

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.signature.input_names]
            out = self.module(*args)
        return {self.signature.output_names[0]: out.numpy()}


def create_engine(folder: Path, manifest: Manifest, backend: Backend, intra_op_threads: int = 0) -> Engine:
    """One engine for a model folder; ``intra_op_threads`` (ONNX Runtime only) 0 = one per core."""
    if backend is Backend.ONNXRUNTIME:
        return OnnxRuntimeEngine(folder / ONNX_FILE, manifest.signature, manifest.max_batch_size, intra_op_threads)
    if backend is Backend.TORCH:
        weights = folder / WEIGHTS_DIR
        if not (weights / "config.json").is_file():
            raise Unavailable(f"model {manifest.name} has no {WEIGHTS_DIR}/ checkpoint for the torch backend")
        return TorchEngine(weights, manifest.signature, manifest.max_batch_size, manifest.source.get("view"))
    if backend is Backend.TENSORRT:
        from genserve.serving.tensorrt_engine import TensorRTEngine

        return TensorRTEngine.for_model(folder, manifest)
    raise ValueError(f"unknown backend {backend}")
