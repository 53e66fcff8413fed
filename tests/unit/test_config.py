"""Server configuration: TOML sections, precedence of flags, and errors that name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from genserve.serving.config import FRONTENDS, Backend, ConfigError, ModelSettings, load_config

GOOD = """
[server]
models = "repo"
port = 6000
backend = "torch"
grace_period_s = 3
metrics_port = 9100

[model_defaults]
max_batch_size = 32
max_queue_delay_ms = 1.5
max_queue_size = 10

[models.dcgan-mnist]
preferred_batch_sizes = [32, 16]
instances = 2
priority_levels = 2
default_timeout_ms = 500
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "genserve.toml"
    path.write_text(text)
    return path


def test_a_full_file_sets_server_defaults_and_per_model_sections(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.models_dir == (tmp_path / "repo").resolve()  # relative to the file
    assert (config.port, config.backend, config.grace_period, config.metrics_port) == (6000, Backend.TORCH, 3.0, 9100)
    dcgan = config.settings_for("dcgan-mnist")
    assert dcgan.max_batch_size == 32 and dcgan.max_queue_size == 10  # inherited from [model_defaults]
    assert dcgan.preferred_batch_sizes == (16, 32) and dcgan.instances == 2
    assert dcgan.queue_policy().default_timeout == pytest.approx(0.5)
    assert dcgan.batch_policy(engine_limit=64).max_queue_delay == pytest.approx(0.0015)
    other = config.settings_for("ddpm-mnist")
    assert other.instances == 1 and other.max_batch_size == 32


def test_command_line_flags_override_every_model_and_the_file(tmp_path):
    config = load_config(
        write(tmp_path, GOOD),
        overrides={"port": 7000, "host": None},
        model_overrides={"max_batch_size": 1, "max_queue_delay_ms": None},
    )
    assert config.port == 7000
    assert config.settings_for("dcgan-mnist").max_batch_size == 1
    assert config.settings_for("ddpm-mnist").max_batch_size == 1
    assert config.settings_for("dcgan-mnist").max_queue_delay_ms == 1.5  # a flag left unset changes nothing
    assert config.key_of("dcgan-mnist", "max_batch_size") == "--max-batch-size"
    assert config.key_of("dcgan-mnist", "instances") == "models.dcgan-mnist.instances"
    assert config.key_of("ddpm-mnist", "instances") == "model_defaults.instances"


def test_no_file_gives_the_built_in_defaults(tmp_path):
    config = load_config(None, default_models_dir=tmp_path)
    assert config.models_dir == tmp_path and config.metrics_port is None
    assert config.settings_for("anything") == ModelSettings()
    assert ModelSettings().batch_policy(engine_limit=64).max_batch_size == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model_defaults]\nmax_batch_size = 0\n", "model_defaults.max_batch_size: expected an integer >= 1, got 0"),
        ('[models.m]\nmax_queue_delay_ms = "2"\n', "models.m.max_queue_delay_ms: expected a number >= 0, got '2'"),
        ("[models.m]\nmax_batch = 4\n", "models.m.max_batch: unknown key"),
        ("[server]\nport = 70000\n", "server.port: expected a port in [0, 65535], got 70000"),
        ('[server]\nbackend = "tensorflow"\n', "server.backend: expected one of onnxruntime, torch, cuda, tensorrt"),
        ("[servers]\nport = 1\n", "servers: unknown section"),
        ("[models.m]\npreferred_batch_sizes = [4, 0]\n", "models.m.preferred_batch_sizes: expected a list of integers"),
        ("[models.m]\nmax_batch_size = 8\npreferred_batch_sizes = [16]\n", "models.m.preferred_batch_sizes: [16]"),
        ("[models.m]\npriority_levels = 2\ndefault_priority = 3\n", "models.m.default_priority: 3 exceeds"),
        ("[models.m]\ninstances = true\n", "models.m.instances: expected an integer >= 1, got True"),
        ("[model_defaults\n", "not valid TOML"),
    ],
)
def test_invalid_configuration_fails_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), default_models_dir=tmp_path)
    assert message in str(error.value)


def test_every_problem_is_reported_at_once(tmp_path):
    text = "[model_defaults]\nmax_batch_size = -1\nmax_queue_size = -1\n[models.m]\nbogus = 1\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), default_models_dir=tmp_path)
    assert len(error.value.problems) == 3


def test_invalid_flags_are_named_as_flags(tmp_path):
    with pytest.raises(ConfigError, match="--max-queue-size: expected an integer >= 0, got -5"):
        load_config(None, model_overrides={"max_queue_size": -5}, default_models_dir=tmp_path)


def test_a_missing_file_is_reported_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", default_models_dir=tmp_path)


def test_a_batch_size_over_the_engine_limit_is_reported_with_the_model():
    problems = ModelSettings(max_batch_size=128).check_engine_limit(64, "dcgan-mnist", "--max-batch-size")
    assert problems == [
        "--max-batch-size: 128 exceeds the engine limit of model dcgan-mnist, 64 "
        "(the model folder's max_batch_size; re-export with a larger one)"
    ]


def test_the_example_config_in_the_repository_is_valid():
    path = Path(__file__).resolve().parents[2] / "configs" / "server.toml"
    config = load_config(path)
    assert config.models_dir == (path.parent.parent / "models").resolve()
    assert config.settings_for("dcgan-mnist").max_batch_size == 64
    assert config.settings_for("ddpm-mnist").queue_policy().default_timeout == 600.0


def test_the_cli_offers_exactly_the_transports_the_config_accepts():
    # The parser takes them from serving.config, which imports no grpc, numpy or torch (kept cheap for it).
    from genserve.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    (frontend,) = [a for a in serve._actions if "--frontend" in a.option_strings]
    assert tuple(frontend.choices) == FRONTENDS


def test_the_config_module_stays_cheap_to_import():
    """The CLI's parser imports serving.config on every command: it must not pull in the runtime."""
    import subprocess
    import sys

    runtime = "{'grpc', 'numpy', 'torch', 'google.protobuf'}"
    code = f"import sys, genserve.serving.config; print(sorted({runtime} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_security_and_connection_keys_resolve_paths_against_the_file(tmp_path):
    for name in ("server.pem", "server.key", "ca.pem", "tokens"):
        (tmp_path / name).write_text("x")
    text = """
[server]
models = "repo"
tls_cert = "server.pem"
tls_key = "server.key"
tls_client_ca = "ca.pem"
auth_token_file = "tokens"
reflection = false
drain_delay_s = 2.5
log_format = "json"
max_connection_age_s = 300
max_connection_age_grace_s = 0
keepalive_time_s = 60
"""
    config = load_config(write(tmp_path, text), {"connection": {"keepalive_timeout": 5.0}})
    assert config.security.tls_cert == tmp_path / "server.pem" and config.security.tls_client_ca == tmp_path / "ca.pem"
    assert config.security.auth_token_file == tmp_path / "tokens" and not config.security.reflection
    assert (config.drain_delay, config.log_format) == (2.5, "json")
    c = config.connection
    assert (c.max_connection_age, c.max_connection_age_grace, c.keepalive_time, c.keepalive_timeout) == (300, 0, 60, 5)


def test_tls_settings_that_cannot_work_are_refused_at_start(tmp_path):
    (tmp_path / "server.pem").write_text("x")
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            {
                "models_dir": tmp_path,
                "security": {"tls_cert": tmp_path / "server.pem", "tls_client_ca": tmp_path / "missing.pem"},
                "connection": {"max_connection_age": -1.0},
                "drain_delay": -2.0,
            },
        )
    message = str(err.value)
    assert "--tls-cert and --tls-key: give both" in message
    assert f"--tls-client-ca: no such file: {tmp_path / 'missing.pem'}" in message
    assert "--max-connection-age: expected a number of seconds > 0, got -1.0" in message
    assert "--drain-delay: expected seconds >= 0, got -2.0" in message
