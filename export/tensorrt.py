"""TensorRT engines built from a model folder's ``model.onnx`` and cached in its ``engines/``.

A serialized engine is valid only for the TensorRT version, the GPU (model and compute
capability), the precision and the shape profile it was built with. Its file name is a
digest of all of these (``cache_key``), and a JSON sidecar beside it lists, in words, what
the digest covers. Building takes minutes, so an engine whose key already exists is reused,
never rebuilt; a file lock keeps two processes from building the same engine at once.

Shape profiles come from ``Signature.profile`` (the one place names and dynamic axes live),
so export, engine build and serving cannot disagree about them.

TensorRT is imported lazily, inside the functions that need it: this module imports, and
its pure parts are tested, on machines with neither TensorRT nor a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genserve import manifest as mf
from genserve.signature import BATCH

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"  # under the model folder, see genserve.manifest
ENGINE_SUFFIX = ".plan"
SIDECAR_SUFFIX = ".json"
KEY_FORMAT = 1  # bump when what the key covers changes, so old engines stop matching
KEY_CHARS = 16  # 64 bits of sha256: collisions among one folder's engines are not a concern
DEFAULT_WORKSPACE_BYTES = 1 << 30
MIN_TENSORRT_MAJOR = 10

Shape = tuple[int, ...]
ShapeBounds = tuple[Shape, Shape, Shape]  # (min, opt, max)


class Precision(enum.Enum):
    FP32 = "fp32"  # strict: TF32 is switched off, so results match ONNX Runtime to ~1e-5
    TF32 = "tf32"  # fp32 tensors, TF32 matrix units for convolutions and matrix products (Ampere and newer)
    FP16 = "fp16"  # TensorRT may pick fp16 kernels where faster; I/O stays as in the graph
    BF16 = "bf16"  # as FP16, with bfloat16 kernels (Ampere and newer)


class TensorRTUnavailableError(RuntimeError):
    """TensorRT cannot be used here: not installed, too old, or no CUDA device."""


class EngineBuildError(RuntimeError):
    """The ONNX graph could not be parsed or built into an engine; lists every reported error."""


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """What to build: precision, the optimisation profile for every input, workspace."""

    precision: Precision
    opt_batch: int
    max_batch: int
    profile: tuple[tuple[str, ShapeBounds], ...]  # (input name, (min, opt, max)) in signature order
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt {self.opt_batch}, max {self.max_batch}")
        if self.workspace_bytes <= 0:
            raise ValueError(f"workspace_bytes must be positive, got {self.workspace_bytes}")

    @property
    def min_batch(self) -> int:
        return 1  # Signature.profile always starts at batch 1

    @classmethod
    def from_manifest(
        cls,
        manifest: mf.Manifest,
        precision: Precision = Precision.FP32,
        max_batch: int | None = None,
        opt_batch: int | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    ) -> EngineSpec:
        """The spec for serving ``manifest``: batch 1 up to its ``max_batch_size`` unless overridden."""
        max_batch = max_batch or manifest.max_batch_size
        profile = manifest.signature.profile(max_batch, opt_batch)
        first = manifest.signature.inputs[0]
        opt_shape = profile[first.name][1]  # Signature.profile owns the default opt batch
        opt_batch = opt_shape[first.shape.index(BATCH)]
        return cls(
            precision=precision,
            opt_batch=opt_batch,
            max_batch=max_batch,
            profile=tuple((name, bounds) for name, bounds in profile.items()),
            workspace_bytes=workspace_bytes,
        )

    def profile_dict(self) -> dict[str, ShapeBounds]:
        return dict(self.profile)

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision.value,
            "min_batch": self.min_batch,
            "opt_batch": self.opt_batch,
            "max_batch": self.max_batch,
            "workspace_bytes": self.workspace_bytes,
            "profile": {
                name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in self.profile
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineSpec:
        return cls(
            precision=Precision(d["precision"]),
            opt_batch=int(d["opt_batch"]),
            max_batch=int(d["max_batch"]),
            profile=tuple(
                (name, (tuple(b["min"]), tuple(b["opt"]), tuple(b["max"]))) for name, b in d["profile"].items()
            ),
            workspace_bytes=int(d["workspace_bytes"]),
        )


# --- the cache key ---------------------------------------------------------------------------


def key_fields(
    onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: tuple[int, int], spec: EngineSpec
) -> dict[str, Any]:
    """Everything that makes an engine non-portable, as the JSON the key digests."""
    return {
        "key_format": KEY_FORMAT,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
        **spec.to_json(),
    }


def cache_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: tuple[int, int], spec: EngineSpec
) -> str:
    """Short stable hex digest of ``key_fields``: equal inputs give equal keys on any machine."""
    fields = key_fields(onnx_sha256, trt_version, gpu_name, compute_capability, spec)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_CHARS]


def engine_path(model_folder: Path, key: str) -> Path:
    return model_folder / ENGINES_DIR / f"{key}{ENGINE_SUFFIX}"


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(SIDECAR_SUFFIX)


def timing_cache_path(model_folder: Path, trt_version: str, gpu_name: str, compute_capability: tuple[int, int]) -> Path:
    """Tactic timings are per TensorRT version and GPU; one file per such pair, shared by precisions."""
    device = json.dumps([trt_version, gpu_name, list(compute_capability)])
    return model_folder / ENGINES_DIR / f"timing-{hashlib.sha256(device.encode()).hexdigest()[:KEY_CHARS]}.cache"


@dataclasses.dataclass(frozen=True)
class EngineRecord:
    """The sidecar: what an engine was built from and for, and how long it took."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    spec: EngineSpec
    build_seconds: float | None = None
    built_at: str = ""  # ISO 8601, UTC

    @property
    def key(self) -> str:
        return cache_key(self.onnx_sha256, self.tensorrt_version, self.gpu_name, self.compute_capability, self.spec)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "about": "A TensorRT engine is valid only for what 'covers' lists; 'key' is its digest "
            "(genserve.export.tensorrt.cache_key) and the engine's file name.",
            "covers": key_fields(
                self.onnx_sha256, self.tensorrt_version, self.gpu_name, self.compute_capability, self.spec
            ),
            "build_seconds": self.build_seconds,
            "built_at": self.built_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineRecord:
        covers = d["covers"]
        if covers.get("key_format") != KEY_FORMAT:
            raise ValueError(f"sidecar key_format {covers.get('key_format')!r}, this genserve writes {KEY_FORMAT}")
        major, minor = (int(x) for x in str(covers["compute_capability"]).split("."))
        record = cls(
            onnx_sha256=covers["onnx_sha256"],
            tensorrt_version=covers["tensorrt_version"],
            gpu_name=covers["gpu_name"],
            compute_capability=(major, minor),
            spec=EngineSpec.from_json(covers),
            build_seconds=d.get("build_seconds"),
            built_at=d.get("built_at", ""),
        )
        if record.key != d.get("key"):
            raise ValueError(f"sidecar key {d.get('key')!r} is not the digest of what it covers ({record.key})")
        return record


def write_sidecar(engine: Path, record: EngineRecord) -> Path:
    path = sidecar_path(engine)
    _atomic_write(path, (json.dumps(record.to_json(), indent=2) + "\n").encode())
    return path


def read_sidecar(engine: Path) -> EngineRecord:
    return EngineRecord.from_json(json.loads(sidecar_path(engine).read_text()))


# --- environment -----------------------------------------------------------------------------


def import_tensorrt():
    """The ``tensorrt`` module, or TensorRTUnavailableError saying why not."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        raise TensorRTUnavailableError(
            f"TensorRT is not installed (import tensorrt failed: {exc}); "
            f"install NVIDIA's tensorrt>={MIN_TENSORRT_MAJOR} wheel on a CUDA machine (pip install 'genserve[gpu]')"
        ) from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailableError(f"TensorRT {trt.__version__} found, genserve needs >= {MIN_TENSORRT_MAJOR}")
    return trt


def current_device(index: int | None = None) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of the CUDA device engines are built for and run on."""
    import torch

    if not torch.cuda.is_available():
        why = (
            f"this torch build ({torch.__version__}) has no CUDA support"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
        )
        raise TensorRTUnavailableError(f"no CUDA device: {why}")
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), (int(major), int(minor))


def missing_requirements() -> list[str]:
    """Every reason TensorRT cannot run here (empty when it can), each in words."""
    problems = []
    for check in (import_tensorrt, current_device):
        try:
            check()
        except TensorRTUnavailableError as exc:
            problems.append(str(exc))
    return problems


_TRT_LOGGER = None


def trt_logger():
    """One ``trt.ILogger`` for builders and runtimes (TensorRT treats the logger as global).

    Forwards to Python logging and keeps the errors of the current build for the exception.
    """
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        trt = import_tensorrt()

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg: str) -> None:
                if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                    self.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.WARNING:
                    log.warning("TensorRT: %s", msg)
                elif severity == trt.ILogger.INFO:
                    log.debug("TensorRT: %s", msg)  # INFO is chatty: layer and tactic counts

        _TRT_LOGGER = _Logger()
    return _TRT_LOGGER


# --- build -----------------------------------------------------------------------------------


def build_engine(model_folder: Path, spec: EngineSpec, timing_cache: Path | None = None) -> Path:
    """Build ``model.onnx`` into an engine for this GPU, or return the cached one with the same key.

    Writes ``engines/<key>.plan`` and its sidecar ``engines/<key>.json`` atomically. Raises
    TensorRTUnavailableError without TensorRT or a GPU, EngineBuildError if TensorRT rejects
    the graph. ``timing_cache`` (read if present, then updated) speeds up later builds.
    """
    trt = import_tensorrt()
    gpu_name, capability = current_device()
    onnx_path = model_folder / mf.ONNX_FILE
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path} not found")
    onnx_sha256 = mf.sha256(onnx_path)  # the bytes on disk, not what a manifest claims
    if spec.precision is Precision.TF32 and capability < (8, 0):
        log.warning("%s (sm_%d%d) has no TF32 units: a tf32 engine computes in fp32 there", gpu_name, *capability)
    record = EngineRecord(onnx_sha256, str(trt.__version__), gpu_name, capability, spec)
    path = engine_path(model_folder, record.key)
    if _is_cached(path, record.key):
        log.info("reusing TensorRT engine %s (%s)", path, _describe(record))
        return path
    with _build_lock(path.with_suffix(".lock")):
        if _is_cached(path, record.key):  # another process built it while we waited
            log.info("reusing TensorRT engine %s, built by another process", path)
            return path
        log.info("building TensorRT engine %s (%s); this takes minutes", path, _describe(record))
        started = time.monotonic()
        plan = _build_serialized(trt, onnx_path, spec, timing_cache)
        seconds = round(time.monotonic() - started, 1)
        _atomic_write(path, plan)
        built_at = datetime.now(UTC).isoformat(timespec="seconds")
        write_sidecar(path, dataclasses.replace(record, build_seconds=seconds, built_at=built_at))
        log.info("built %s in %.1f s (%.1f MiB)", path, seconds, path.stat().st_size / 2**20)
    return path


def _describe(record: EngineRecord) -> str:
    s = record.spec
    return (
        f"TensorRT {record.tensorrt_version}, {record.gpu_name} sm_{record.compute_capability[0]}"
        f"{record.compute_capability[1]}, {s.precision.value}, batch {s.min_batch}/{s.opt_batch}/{s.max_batch}"
    )


def _is_cached(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        return read_sidecar(path).key == key
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a crash between the two writes, or an old format
        log.warning("ignoring cached engine %s: unreadable sidecar (%s); rebuilding", path, exc)
        return False


def _build_serialized(trt, onnx_path: Path, spec: EngineSpec, timing_cache: Path | None):
    """Parse, configure and build; returns the serialized engine (``IHostMemory``)."""
    logger = trt_logger()
    logger.errors.clear()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not parse {onnx_path}: {len(errors)} error(s):\n  " + "\n  ".join(errors)
        )
    graph_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    profile_inputs = set(spec.profile_dict())
    if graph_inputs != profile_inputs:
        raise EngineBuildError(
            f"{onnx_path} inputs {sorted(graph_inputs)} differ from the profile's {sorted(profile_inputs)}: "
            "re-export the model folder"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    _set_precision(trt, config, spec.precision)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.profile:
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        _load_timing_cache(config, timing_cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errors = logger.errors or ["no error reported; rerun with genserve logging at DEBUG"]
        raise EngineBuildError(
            f"TensorRT {trt.__version__} failed to build {onnx_path} ({spec.precision.value}):\n  "
            + "\n  ".join(errors)
        )
    if timing_cache is not None:
        _atomic_write(timing_cache, config.get_timing_cache().serialize())
    return plan


def _parser_error(error) -> str:
    where = f"node {error.node()}"
    name = getattr(error, "node_name", None)  # TensorRT >= 10: name and operator of the failing node
    if name is not None:
        where += f" {name()!r} ({error.node_operator()})"
    return f"{where}: {error.desc()} [{error.code()}]"


def _set_precision(trt, config, precision: Precision) -> None:
    if precision is Precision.FP32:
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default; TF32 keeps 10 mantissa bits
        return
    flag = getattr(trt.BuilderFlag, precision.name, None)
    if flag is None and precision is Precision.TF32:
        raise EngineBuildError(f"TensorRT {trt.__version__} has no TF32 builder flag; build {Precision.FP32.value}")
    if flag is None:  # weakly typed precision flags are deprecated in 10.12 and gone in 11
        raise EngineBuildError(
            f"TensorRT {trt.__version__} has no {precision.name} builder flag; build {Precision.FP32.value}, "
            f"or export a strongly typed {precision.value} graph"
        )
    config.set_flag(flag)  # TF32 is on by default; set anyway, so a changed default cannot change the engine


def _load_timing_cache(config, path: Path) -> None:
    """A timing cache only saves build time: an unreadable or foreign one is replaced, never fatal."""
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        if config.set_timing_cache(cache, ignore_mismatch=False):
            log.info("timing cache %s: %d bytes loaded", path, len(data))
            return
        log.warning("timing cache %s was made for another TensorRT or GPU; starting an empty one", path)
    except Exception as exc:  # TensorRT raises its own types for corrupt blobs
        log.warning("timing cache %s unreadable (%s); starting an empty one", path, exc)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


# --- files -----------------------------------------------------------------------------------


def _atomic_write(path: Path, data) -> None:
    """Write a bytes-like object so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX): one build per engine key across processes."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s; waiting for it", path.with_suffix(ENGINE_SUFFIX))
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
