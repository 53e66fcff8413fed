"""TensorRT backend: one class per compiled engine, with an explicit lifecycle.

Like the ``Engine`` of TensorRT's demo/Diffusion: build (or find in the model folder's
cache, ``genserve.export.tensorrt``), ``load`` (deserialize), ``activate`` (execution
context and stream), ``allocate_buffers`` (device and pinned host buffers for the largest
batch, made once), ``infer``. A call copies its inputs into the leading slice of those
buffers, sets the actual batch's shapes, enqueues the engine, copies the outputs back and
synchronizes once, at the end. Device memory and streams are torch's, so no CUDA binding
beyond torch is needed.

Names, dtypes, shapes and the batch axis come from the model's ``Signature``; TensorRT and
CUDA are needed only once an engine is loaded.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genserve.export.tensorrt import (
    EngineBuildError,
    EngineSpec,
    Precision,
    TensorRTUnavailableError,
    build_engine,
    current_device,
    import_tensorrt,
    missing_requirements,
    timing_cache_path,
    trt_logger,
)
from genserve.manifest import Manifest
from genserve.serving.errors import InternalError, InvalidArgument, Unavailable
from genserve.signature import BATCH, Signature, TensorSpec

if TYPE_CHECKING:
    from genserve.serving.config import Precision as ServingPrecision

log = logging.getLogger(__name__)


def engine_precision(precision: Precision | ServingPrecision) -> Precision:
    """The engine build's precision for the serving-wide one (or an engine precision): same value."""
    try:
        return Precision(precision.value)
    except ValueError as exc:
        choices = ", ".join(p.value for p in Precision)
        raise ValueError(f"TensorRT engines have no {precision.value} precision (they have {choices})") from exc


def validate_feeds(signature: Signature, feeds: dict[str, np.ndarray], max_batch_size: int) -> int:
    """The batch size of ``feeds``; InvalidArgument listing every way they break the signature."""
    names = signature.input_names
    missing = [n for n in names if n not in feeds]
    unknown = sorted(set(feeds) - set(names))
    if missing or unknown:
        raise InvalidArgument(f"inputs must be exactly {names}; missing {missing}, unknown {unknown}")
    problems: list[str] = []
    batches: dict[str, int] = {}
    for spec in signature.inputs:
        array = feeds[spec.name]
        if not isinstance(array, np.ndarray):
            problems.append(f"{spec.name}: expected a NumPy array, got {type(array).__name__}")
            continue
        if array.dtype != np.dtype(spec.dtype):
            problems.append(f"{spec.name}: dtype {array.dtype}, expected {spec.dtype}")
        if array.ndim != len(spec.shape) or any(
            want != BATCH and got != want for got, want in zip(array.shape, spec.shape, strict=True)
        ):
            problems.append(f"{spec.name}: shape {tuple(array.shape)}, expected {_shape_text(spec)}")
        elif BATCH in spec.shape:
            batches[spec.name] = array.shape[spec.shape.index(BATCH)]
    if problems:
        raise InvalidArgument("; ".join(problems))
    if len(set(batches.values())) > 1:
        raise InvalidArgument(f"inputs disagree on the batch size: {batches}")
    batch = next(iter(batches.values()), 1)
    if not 1 <= batch <= max_batch_size:
        raise InvalidArgument(f"batch size {batch} outside [1, {max_batch_size}], this engine's limit")
    return batch


def _shape_text(spec: TensorSpec) -> str:
    return "(" + ", ".join("batch" if d == BATCH else str(d) for d in spec.shape) + ")"


class TensorRTEngine:
    """A serialized TensorRT engine serving one model's signature (the ``Engine`` protocol)."""

    def __init__(self, engine_path: Path, signature: Signature, max_batch_size: int, device: int | None = None):
        self.engine_path = engine_path
        self.signature = signature
        self.max_batch_size = max_batch_size
        self.device = device  # CUDA device index; the current device at load() when None
        self._runtime = None
        self._engine = None
        self._context = None
        self._stream = None
        self._device_buffers: dict = {}  # name -> torch CUDA tensor, shape at the allocated batch
        self._host_buffers: dict = {}  # name -> pinned torch CPU tensor, same shape
        self._host_views: dict[str, np.ndarray] = {}  # NumPy views of the pinned buffers
        self._allocated_batch = 0
        self._lock = threading.Lock()  # one context, one set of buffers: one call at a time

    @classmethod
    def for_model(
        cls,
        folder: Path,
        manifest: Manifest,
        precision: Precision | ServingPrecision = Precision.FP32,
        warm_up: bool = True,
    ) -> TensorRTEngine:
        """The model's engine for this GPU, built into ``folder/engines/`` unless cached, ready to run.

        ``precision`` is the serving-wide ``genserve.serving.config.Precision`` or the engine
        build's own, matched by value. Raises Unavailable, naming what is missing or what failed:
        the server fails to start with that message.
        """
        try:
            precision = engine_precision(precision)
        except ValueError as exc:
            raise Unavailable(f"TensorRT backend unavailable for model {manifest.name}: {exc}") from exc
        problems = missing_requirements()
        if problems:
            raise Unavailable(f"TensorRT backend unavailable for model {manifest.name}: " + "; ".join(problems))
        spec = EngineSpec.from_manifest(manifest, precision)
        try:
            trt = import_tensorrt()
            timing_cache = timing_cache_path(folder, str(trt.__version__), *current_device())
            path = build_engine(folder, spec, timing_cache)
        except (TensorRTUnavailableError, EngineBuildError, OSError) as exc:
            raise Unavailable(f"no TensorRT engine for model {manifest.name}: {exc}") from exc
        engine = cls(path, manifest.signature, manifest.max_batch_size)
        engine.load()
        engine.activate()
        engine.allocate_buffers()
        if warm_up:
            engine.warm_up()
        log.info("serving model %s on the %s TensorRT engine %s", manifest.name, precision.value, path.name)
        return engine

    # --- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Deserialize the engine and check its I/O against the signature."""
        import torch

        try:
            trt = import_tensorrt()
        except TensorRTUnavailableError as exc:
            raise Unavailable(str(exc)) from exc
        if self.device is None:
            self.device = torch.cuda.current_device()
        logger = trt_logger()
        logger.errors.clear()
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(logger)
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise Unavailable(
                f"TensorRT {trt.__version__} could not deserialize {self.engine_path}: "
                + ("; ".join(logger.errors) or "no error reported")
            )
        problems = self._io_problems(trt, engine)
        if problems:
            raise Unavailable(f"engine {self.engine_path} does not match the model's signature: " + "; ".join(problems))
        self._engine = engine
        log.info("loaded TensorRT engine %s", self.engine_path)

    def activate(self) -> None:
        """Create the execution context (it owns the activation memory) and the stream."""
        import torch

        if self._engine is None:
            raise RuntimeError("activate() before load()")
        with torch.cuda.device(self.device):
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=self.device)
        if self._context is None:
            raise Unavailable(f"could not create a TensorRT execution context for {self.engine_path} (GPU memory?)")

    def allocate_buffers(self, batch: int | None = None) -> None:
        """Device and pinned host buffers for every I/O tensor at ``batch`` (default: the max), once."""
        import torch

        if self._context is None:
            raise RuntimeError("allocate_buffers() before activate()")
        batch = batch or self.max_batch_size
        if not 1 <= batch <= self.max_batch_size:
            raise ValueError(f"batch must be in [1, {self.max_batch_size}], got {batch}")
        for spec in (*self.signature.inputs, *self.signature.outputs):
            shape = spec.concrete(batch)
            dtype = getattr(torch, spec.dtype)  # NumPy and torch share these dtype names
            device = torch.empty(shape, dtype=dtype, device=f"cuda:{self.device}")
            host = torch.empty(shape, dtype=dtype, pin_memory=True)
            self._device_buffers[spec.name] = device
            self._host_buffers[spec.name] = host
            self._host_views[spec.name] = host.numpy()
            # Buffers never move, so their addresses are set once; a call only sets shapes.
            if not self._context.set_tensor_address(spec.name, device.data_ptr()):
                raise Unavailable(f"TensorRT rejected the buffer address of {spec.name!r}")
        self._allocated_batch = batch

    def warm_up(self) -> None:
        """Run the smallest and largest batch once, so lazy CUDA module loading is not a client's wait."""
        for batch in sorted({1, self._allocated_batch}):
            self.infer(self.signature.sample_inputs(batch))

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if not self._allocated_batch:
            raise RuntimeError("infer() before load(), activate() and allocate_buffers()")
        batch = validate_feeds(self.signature, feeds, min(self.max_batch_size, self._allocated_batch))
        context, stream = self._context, self._stream
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(stream):
            for spec in self.signature.inputs:
                self._host_views[spec.name][:batch] = feeds[spec.name]  # into pinned memory, on the CPU
                self._device_buffers[spec.name][:batch].copy_(self._host_buffers[spec.name][:batch], non_blocking=True)
                if not context.set_input_shape(spec.name, spec.concrete(batch)):
                    raise InternalError(f"TensorRT rejected shape {spec.concrete(batch)} for input {spec.name!r}")
            for spec in self.signature.outputs:
                shape = tuple(context.get_tensor_shape(spec.name))
                if shape != spec.concrete(batch):
                    raise InternalError(
                        f"engine output {spec.name!r} has shape {shape}, expected {spec.concrete(batch)}"
                    )
            if not context.execute_async_v3(stream.cuda_stream):
                raise InternalError(f"TensorRT execution failed for {self.engine_path} at batch {batch}")
            for spec in self.signature.outputs:
                self._host_buffers[spec.name][:batch].copy_(self._device_buffers[spec.name][:batch], non_blocking=True)
            stream.synchronize()  # the one host sync of the call
            # Copies: the pinned buffers are overwritten by the next call.
            return {spec.name: self._host_views[spec.name][:batch].copy() for spec in self.signature.outputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer(feeds)

    def close(self) -> None:
        """Free the context, engine and buffers (in that order: the context uses the engine)."""
        with self._lock:
            if self._stream is not None:
                self._stream.synchronize()
            self._allocated_batch = 0
            self._device_buffers.clear()
            self._host_buffers.clear()
            self._host_views.clear()
            self._context = None
            self._engine = None
            self._runtime = None

    # --- checks ------------------------------------------------------------------------------

    def _io_problems(self, trt, engine) -> list[str]:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        problems = []
        if sorted(inputs) != sorted(self.signature.input_names):
            problems.append(f"engine inputs {sorted(inputs)}, signature {sorted(self.signature.input_names)}")
        if sorted(outputs) != sorted(self.signature.output_names):
            problems.append(f"engine outputs {sorted(outputs)}, signature {sorted(self.signature.output_names)}")
        if problems:
            return problems
        for spec in (*self.signature.inputs, *self.signature.outputs):
            dtype = _TRT_DTYPES.get(engine.get_tensor_dtype(spec.name).name)
            if dtype != spec.dtype:
                problems.append(
                    f"{spec.name}: engine dtype {engine.get_tensor_dtype(spec.name)}, signature {spec.dtype}"
                )
        for spec in self.signature.inputs:
            lo, _, hi = (tuple(s) for s in engine.get_tensor_profile_shape(spec.name, 0))
            for batch in (1, self.max_batch_size):
                want = spec.concrete(batch)
                if len(want) != len(lo) or not all(a <= w <= b for a, w, b in zip(lo, want, hi, strict=True)):
                    problems.append(f"{spec.name}: shape {want} outside the engine's profile {lo}..{hi}")
        return problems


_TRT_DTYPES = {  # trt.DataType member name -> NumPy dtype name
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}
