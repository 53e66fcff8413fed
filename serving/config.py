"""Server configuration: one TOML file, per-model sections, command-line overrides.

    [server]
    models = "models"          # model repository (relative to the file)
    host = "127.0.0.1"         # loopback; "0.0.0.0" in containers and behind a balancer
    port = 50051
    backend = "onnxruntime"    # onnxruntime | torch | cuda | tensorrt
    precision = "fp32"         # fp32 | tf32 | bf16 | fp16 (cuda and tensorrt; also per model)
    cuda_graphs = true         # cuda: a CUDA graph per batch bucket, captured at load
    compile = false            # torch, cuda: torch.compile before capture
    engine_profile = "prof"    # the engines' own profilers write here (flushed at stop); absent = off
    frontend = "auto"          # gRPC transport: auto (native if built) | native | grpcio
    grace_period_s = 10
    drain_delay_s = 0          # SIGTERM: NOT_SERVING, still accepting this long, then drain
    metrics_port = 9090        # Prometheus /metrics; absent = off
    log_format = "text"        # text | json (one line per finished call)
    reflection = true

    max_connection_age_s = 300         # GOAWAY after this, so clients rebalance; absent = never
    max_connection_age_grace_s = 30    # calls on an aged connection get this long
    keepalive_time_s = 60              # PING an idle connection this often; absent = never
    keepalive_timeout_s = 20           # and close it if the PING goes unanswered

    tls_cert = "server.pem"    # TLS: certificate chain and key (PEM); both or neither
    tls_key = "server.key"
    tls_client_ca = "ca.pem"   # mutual TLS: clients must present a certificate signed by this
    auth_token_file = "tokens" # bearer tokens, one per line; reloaded on SIGHUP

    [model_defaults]           # every model, unless its own section says otherwise
    max_batch_size = 64
    max_queue_delay_ms = 0

    [models.dcgan-mnist]
    preferred_batch_sizes = [32, 64]
    instances = 1

Precedence, lowest first: built-in defaults, ``[model_defaults]``, ``[models.NAME]``, then the
command-line flags, which apply to every model. Every problem is reported at start, each naming
its key (``models.dcgan-mnist.max_batch_size: ...``); limits that need the model itself (the
engine's batch limit, a section naming no served model) are checked when the models load.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.serving.batching import BatchPolicy, QueuePolicy

# Largest message either side sends or accepts (gRPC's default is 4 MiB); server and client share it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Backend(enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"  # PyTorch eager on the CPU: the reference
    CUDA = "cuda"  # PyTorch on a CUDA device, CUDA graphs per batch bucket
    TENSORRT = "tensorrt"


class Precision(enum.Enum):
    """The arithmetic an engine computes in; its inputs and outputs stay as the signature says."""

    FP32 = "fp32"  # strict (no TF32): matches ONNX Runtime on the CPU to ~1e-5
    TF32 = "tf32"  # fp32 tensors, TF32 matrix units (Ampere and newer)
    BF16 = "bf16"  # autocast to bfloat16 for convolutions and matrix products
    FP16 = "fp16"  # autocast to float16, likewise


@dataclass(frozen=True)
class EngineOptions:
    """How engines are built, beyond the model folder: one per server, ``precision`` per model."""

    precision: Precision = Precision.FP32
    cuda_graphs: bool = True  # cuda backend: capture a CUDA graph per batch bucket at load
    compile: bool = False  # torch and cuda backends: torch.compile (Inductor) before capture
    device: str | None = None  # torch and cuda backends: override the device ("cuda:1", "cpu")
    # The engines' own profilers write here (ONNX Runtime's per session, torch.profiler's for the
    # torch and cuda backends), flushed at server stop; None = off. Profiling slows every call.
    engine_profile: Path | None = None


DEFAULT_HOST = "127.0.0.1"  # loopback: serving beyond the machine is a choice (--host 0.0.0.0)
DEFAULT_PORT = 50051
DEFAULT_GRACE_PERIOD = 10.0


@dataclass(frozen=True)
class ConnectionOptions:
    """HTTP/2 connection management, on both transports. A balancer or client holding one
    long-lived connection never sees a replica added after it connected: ``max_connection_age``
    sends GOAWAY so that it reconnects (and rebalances); keepalive PINGs find dead peers behind
    NATs and idle timeouts. None = gRPC's default (no age limit, no keepalive PINGs)."""

    max_connection_age: float | None = None  # seconds
    max_connection_age_grace: float | None = None  # seconds calls on an aged connection get to finish
    keepalive_time: float | None = None  # seconds between PINGs on an idle connection
    keepalive_timeout: float | None = None  # seconds to wait for a PING's answer before closing

    def problems(self) -> list[str]:
        return [
            f"--{name.replace('_', '-')}: expected a number of seconds > 0, got {value}"
            for name, value in dataclasses.asdict(self).items()
            if value is not None and not (value > 0 or (name == "max_connection_age_grace" and value == 0))
        ]


@dataclass(frozen=True)
class SecurityOptions:
    """TLS (``tls_cert`` + ``tls_key``), mutual TLS (``tls_client_ca``: clients must present a
    certificate it signed) and bearer tokens (``auth_token_file``), on both transports."""

    tls_cert: Path | None = None  # PEM certificate chain
    tls_key: Path | None = None  # PEM private key
    tls_client_ca: Path | None = None  # PEM CA bundle that client certificates must chain to
    auth_token_file: Path | None = None  # one token per line (# comments); reloaded on SIGHUP
    reflection: bool = True  # the reflection service (behind the tokens, when they are on)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def problems(self) -> list[str]:
        out = []
        if (self.tls_cert is None) != (self.tls_key is None):
            out.append("--tls-cert and --tls-key: give both (a certificate and its key) or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            out.append("--tls-client-ca: mutual TLS needs TLS (--tls-cert and --tls-key)")
        for name, path in (
            ("tls-cert", self.tls_cert),
            ("tls-key", self.tls_key),
            ("tls-client-ca", self.tls_client_ca),
            ("auth-token-file", self.auth_token_file),
        ):
            if path is not None and not path.is_file():
                out.append(f"--{name}: no such file: {path}")
        return out


@dataclass(frozen=True)
class TraceOptions:
    """Per-request traces (``serving/tracing.py``): the fraction of calls traced, and where to."""

    rate: float = 0.0  # 0..1
    file: Path | None = None  # Chrome-trace JSON, for Perfetto
    otlp_endpoint: str | None = None  # an OTLP/gRPC collector, "host:4317"

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and (self.file is not None or self.otlp_endpoint is not None)

    def problems(self) -> list[str]:
        out = []
        if not 0.0 <= self.rate <= 1.0:
            out.append(f"--trace-rate: expected a fraction in [0, 1], got {self.rate}")
        if self.rate > 0 and self.file is None and self.otlp_endpoint is None:
            out.append("--trace-rate: traces need somewhere to go: --trace-file or --otlp-endpoint")
        return out


LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem, each with its key."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = problems
        super().__init__(f"invalid {source}:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class ModelSettings:
    """How one model is queued, batched and run. For a diffusion model a batch is its running set
    of image slots (``max_batch_size`` of them at most); delay and preferred sizes do not apply."""

    max_batch_size: int | None = None  # images per engine call; None = the engine's limit (manifest)
    max_queue_delay_ms: float = 0.0  # Triton's default: batch what is queued, wait for no one
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256  # requests waiting to start; 0 = unbounded
    priority_levels: int = 1
    default_priority: int = 1
    default_timeout_ms: float | None = None  # for requests without a deadline; None = none
    instances: int = 1  # engines run concurrently (separate sessions); one-pass models only
    intra_op_threads: int = 0  # threads per engine; 0 = cores / instances
    diffusion_batching: str = "step"  # diffusion: "step" (join at every step) or "request" (baseline)
    precision: str | None = None  # a Precision value; None = the server's

    def batch_policy(self, engine_limit: int) -> BatchPolicy:
        size = engine_limit if self.max_batch_size is None else self.max_batch_size
        return BatchPolicy(size, self.max_queue_delay_ms / 1000.0, self.preferred_batch_sizes)

    def queue_policy(self) -> QueuePolicy:
        timeout = None if self.default_timeout_ms is None else self.default_timeout_ms / 1000.0
        return QueuePolicy(self.max_queue_size, self.priority_levels, self.default_priority, timeout)

    def check_engine_limit(self, engine_limit: int, model: str, key: str) -> list[str]:
        """Problems of these settings with a model whose engine takes ``engine_limit`` images at most."""
        problems = []
        if self.max_batch_size is not None and self.max_batch_size > engine_limit:
            problems.append(
                f"{key}: {self.max_batch_size} exceeds the engine limit of model {model}, {engine_limit} "
                "(the model folder's max_batch_size; re-export with a larger one)"
            )
        return problems


FRONTENDS = ("auto", "native", "grpcio")  # see ServerConfig.frontend


@dataclass(frozen=True)
class ServerConfig:
    models_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 = an ephemeral port, see GenserveServer.port
    backend: Backend = Backend.ONNXRUNTIME
    engine: EngineOptions = field(default_factory=EngineOptions)  # precision, CUDA graphs, compile, device
    frontend: str = "auto"  # the gRPC transport: "native" (gRPC C++, serving/native), "grpcio", or "auto"
    grace_period: float = DEFAULT_GRACE_PERIOD  # seconds calls in flight get to finish at shutdown
    max_message_bytes: int = MAX_MESSAGE_BYTES
    metrics_port: int | None = None  # Prometheus endpoint; None = off, 0 = any free port
    metrics_host: str | None = None  # None = the gRPC host
    drain_delay: float = 0.0  # seconds between NOT_SERVING and refusing calls at SIGTERM (for balancers)
    log_format: str = "text"  # "json": one JSON object per line, one line per finished call
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)
    security: SecurityOptions = field(default_factory=SecurityOptions)
    trace: TraceOptions = field(default_factory=TraceOptions)
    model_defaults: ModelSettings = field(default_factory=ModelSettings)
    models: dict[str, ModelSettings] = field(default_factory=dict)  # complete settings, by model name
    flag_keys: frozenset[str] = frozenset()  # ModelSettings fields set on the command line

    def key_of(self, model: str, setting: str) -> str:
        """Where a model's setting came from, for messages: a flag, its section, or the defaults."""
        if setting in self.flag_keys:
            return "--" + setting.replace("_", "-")
        return f"models.{model}.{setting}" if model in self.models else f"model_defaults.{setting}"

    def settings_for(self, model: str) -> ModelSettings:
        return self.models.get(model, self.model_defaults)


# key -> (type check, description) for each ModelSettings field, in TOML terms.
def _int(lo: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo, f"an integer >= {lo}")


def _number(lo: float):
    return (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= lo,
        f"a number >= {lo:g}",
    )


def _one_of(choices) -> tuple[Any, str]:
    values = [getattr(c, "value", c) for c in choices]  # an Enum's values, or the strings themselves
    return (lambda v: v in values, "one of " + ", ".join(values))


_MODEL_KEYS: dict[str, tuple[Any, str]] = {
    "max_batch_size": _int(1),
    "max_queue_delay_ms": _number(0),
    "preferred_batch_sizes": (
        lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v),
        "a list of integers >= 1",
    ),
    "max_queue_size": _int(0),
    "priority_levels": _int(1),
    "default_priority": _int(1),
    "default_timeout_ms": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
    "instances": _int(1),
    "intra_op_threads": _int(0),
    "diffusion_batching": (lambda v: v in ("step", "request"), '"step" or "request"'),
    "precision": _one_of(Precision),
}
_SERVER_KEYS: dict[str, tuple[Any, str]] = {
    "models": (lambda v: isinstance(v, str) and v != "", "a path"),
    "host": (lambda v: isinstance(v, str) and v != "", "a host name or address"),
    "port": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535, "a port in [0, 65535]"),
    "backend": _one_of(Backend),
    "frontend": _one_of(FRONTENDS),
    "precision": _one_of(Precision),
    "cuda_graphs": (lambda v: isinstance(v, bool), "true or false"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "device": (lambda v: isinstance(v, str) and v != "", 'a torch device ("cuda:0", "cpu")'),
    "engine_profile": (lambda v: isinstance(v, str) and v != "", "a path"),
    "grace_period_s": _number(0),
    "metrics_port": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535,
        "a port in [0, 65535]",
    ),
    "metrics_host": (lambda v: isinstance(v, str) and v != "", "a host name or address"),
    "drain_delay_s": _number(0),
    "log_format": _one_of(LOG_FORMATS),
    "reflection": (lambda v: isinstance(v, bool), "true or false"),
    "max_connection_age_s": _number(0.001),
    "max_connection_age_grace_s": _number(0),
    "keepalive_time_s": _number(0.001),
    "keepalive_timeout_s": _number(0.001),
    "tls_cert": (lambda v: isinstance(v, str) and v != "", "a path"),
    "tls_key": (lambda v: isinstance(v, str) and v != "", "a path"),
    "tls_client_ca": (lambda v: isinstance(v, str) and v != "", "a path"),
    "auth_token_file": (lambda v: isinstance(v, str) and v != "", "a path"),
    "trace_rate": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
        "a number in [0, 1]",
    ),
    "trace_file": (lambda v: isinstance(v, str) and v != "", "a path"),
    "otlp_endpoint": (lambda v: isinstance(v, str) and v != "", 'a collector address ("host:4317")'),
}
_CONNECTION_KEYS = {f.name: f.name + "_s" for f in dataclasses.fields(ConnectionOptions)}  # field -> TOML key
_SECURITY_PATHS = ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file")


def _check_table(table: Any, keys: dict[str, tuple[Any, str]], prefix: str, problems: list[str]) -> dict[str, Any]:
    """The valid entries of ``table``; a problem for each other one. ``prefix`` None = flags."""
    if not isinstance(table, dict):
        problems.append(f"{prefix}: expected a table")
        return {}
    good = {}
    for key, value in table.items():
        name = "--" + key.replace("_", "-") if prefix is None else f"{prefix}.{key}"
        if key not in keys:
            problems.append(f"{name}: unknown key; known keys: {', '.join(sorted(keys))}")
            continue
        check, what = keys[key]
        if not check(value):
            problems.append(f"{name}: expected {what}, got {value!r}")
            continue
        good[key] = value
    return good


def _model_settings(base: ModelSettings, values: dict[str, Any], key: str, problems: list[str]) -> ModelSettings:
    if "preferred_batch_sizes" in values:
        values = {**values, "preferred_batch_sizes": tuple(sorted(set(values["preferred_batch_sizes"])))}
    settings = dataclasses.replace(base, **values)
    if settings.default_priority > settings.priority_levels:
        problems.append(
            f"{key}.default_priority: {settings.default_priority} exceeds priority_levels {settings.priority_levels}"
        )
    if settings.max_batch_size is not None:
        bad = [s for s in settings.preferred_batch_sizes if s > settings.max_batch_size]
        if bad:
            problems.append(f"{key}.preferred_batch_sizes: {bad} exceed max_batch_size {settings.max_batch_size}")
    return settings


def load_config(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    default_models_dir: Path | None = None,
) -> ServerConfig:
    """Read ``path`` (None: defaults only), then apply ``overrides`` (server keys, in ServerConfig
    terms: models_dir, host, port, backend, grace_period, metrics_port, ...; ``engine``,
    ``connection`` and ``security``: dicts of those options' fields) and ``model_overrides``
    (ModelSettings keys, for every model). Raises ConfigError listing every problem."""
    problems: list[str] = []
    source = str(path) if path else "command line"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError([f"cannot read {path}: {exc.strerror}"], source) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not valid TOML: {exc}"], source) from exc
    for key in sorted(set(raw) - {"server", "model_defaults", "models"}):
        problems.append(f"{key}: unknown section; known sections: server, model_defaults, models")

    server = _check_table(raw.get("server", {}), _SERVER_KEYS, "server", problems)
    model_overrides = {k: v for k, v in (model_overrides or {}).items() if v is not None}
    flag_values = _check_table(model_overrides, _MODEL_KEYS, None, problems)
    defaults = _model_settings(
        ModelSettings(),
        _check_table(raw.get("model_defaults", {}), _MODEL_KEYS, "model_defaults", problems),
        "model_defaults",
        problems,
    )
    models_table = raw.get("models", {})
    if not isinstance(models_table, dict):
        problems.append("models: expected a table of [models.NAME] sections")
        models_table = {}

    def with_flags(settings: ModelSettings) -> dict[str, Any]:
        # --max-batch-size caps the batch everywhere: preferred sizes above it are dropped.
        values = dict(flag_values)
        if "max_batch_size" in values:
            limit = values["max_batch_size"]
            values["preferred_batch_sizes"] = [s for s in settings.preferred_batch_sizes if s <= limit]
        return values

    models = {}
    for name, table in models_table.items():
        values = _check_table(table, _MODEL_KEYS, f"models.{name}", problems)
        own = _model_settings(defaults, values, f"models.{name}", problems)
        models[name] = _model_settings(own, with_flags(own), f"models.{name}", problems)
    defaults = _model_settings(defaults, with_flags(defaults), "model_defaults", problems)
    if problems:
        raise ConfigError(problems, source)

    base = path.parent if path is not None else Path.cwd()
    values: dict[str, Any] = {}
    if "models" in server:
        values["models_dir"] = (base / server["models"]).resolve()
    for toml_key, attr in (("host", "host"), ("port", "port"), ("metrics_port", "metrics_port")):
        if toml_key in server:
            values[attr] = server[toml_key]
    if "metrics_host" in server:
        values["metrics_host"] = server["metrics_host"]
    if "backend" in server:
        values["backend"] = Backend(server["backend"])
    if "frontend" in server:
        values["frontend"] = server["frontend"]
    engine = {key: server[key] for key in ("cuda_graphs", "compile", "device") if key in server}
    if "precision" in server:
        engine["precision"] = Precision(server["precision"])
    if "engine_profile" in server:
        engine["engine_profile"] = base / server["engine_profile"]
    if "grace_period_s" in server:
        values["grace_period"] = float(server["grace_period_s"])
    if "drain_delay_s" in server:
        values["drain_delay"] = float(server["drain_delay_s"])
    for key in ("log_format",):
        if key in server:
            values[key] = server[key]
    connection = {f: float(server[k]) for f, k in _CONNECTION_KEYS.items() if k in server}
    security: dict[str, Any] = {key: base / server[key] for key in _SECURITY_PATHS if key in server}
    if "reflection" in server:
        security["reflection"] = server["reflection"]
    trace: dict[str, Any] = {}
    if "trace_rate" in server:
        trace["rate"] = float(server["trace_rate"])
    if "trace_file" in server:
        trace["file"] = base / server["trace_file"]
    if "otlp_endpoint" in server:
        trace["otlp_endpoint"] = server["otlp_endpoint"]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    engine.update(values.pop("engine", {}))  # flags: dicts of the options' fields
    connection.update(values.pop("connection", {}))
    security.update(values.pop("security", {}))
    trace.update(values.pop("trace", {}))
    if trace.keys() & {"file", "otlp_endpoint"}:
        trace.setdefault("rate", 1.0)  # a destination alone means: trace every call
    values["engine"] = EngineOptions(**engine)
    values["connection"] = ConnectionOptions(**connection)
    values["security"] = SecurityOptions(**security)
    values["trace"] = TraceOptions(**trace)
    problems = values["security"].problems() + values["connection"].problems() + values["trace"].problems()
    if values.get("drain_delay", 0) < 0:
        problems.append(f"--drain-delay: expected seconds >= 0, got {values['drain_delay']}")
    if problems:
        raise ConfigError(problems, source)
    values.setdefault("models_dir", default_models_dir)
    if values["models_dir"] is None:
        raise ConfigError(["server.models: no model repository given (set it here or pass --models)"], source)
    return ServerConfig(**values, model_defaults=defaults, models=models, flag_keys=frozenset(flag_values))
