"""The generated-code policy (protos/README.md): committed stubs equal a fresh generation, only
the conversion module imports generated message code, and the KServe v2 service's generated code
is tritonclient's (NVIDIA's): its messages imported by serving/kserve_contract.py alone, its
service code by serving/kserve.py alone."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PB = REPO / "serving" / "pb"
GENERATED = ["genserve_pb2.py", "genserve_pb2.pyi", "genserve_pb2_grpc.py"]
KSERVE_CONTRACT = "serving/kserve_contract.py"  # the KServe conversions: tritonclient's messages
KSERVE = "serving/kserve.py"  # the KServe servicer: tritonclient's service code
# NVIDIA's generated modules of the KServe v2 / Triton protocol, shipped in the tritonclient package.
TRITON_GENERATED = {
    "tritonclient.grpc.service_pb2",
    "tritonclient.grpc.service_pb2_grpc",
    "tritonclient.grpc.model_config_pb2",
}
TRITON_MESSAGES = {"tritonclient.grpc.service_pb2", "tritonclient.grpc.model_config_pb2"}
TRITON_SERVICE = {"tritonclient.grpc.service_pb2_grpc"}


def _sources() -> list[Path]:
    return [p for folder in ("genserve", "serving", "export", "training") for p in (REPO / folder).rglob("*.py")]


def _imported_modules(path: Path) -> set[str]:
    """Modules ``path`` imports: ``import a.b`` -> a.b; ``from a import b`` -> a.b (b may be a module)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def test_committed_stubs_are_what_protos_generate_writes(tmp_path: Path):
    subprocess.run([sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (PB / name).read_bytes(), (
            f"serving/pb/{name} is stale: run .venv/bin/python protos/generate.py"
        )


def test_only_convert_imports_generated_messages_and_only_server_and_client_import_stubs():
    """genserve's own and the standard services' generated code; serving/kserve_contract.py
    (tritonclient's generated messages only) is checked by the next test."""
    message_users, stub_users = set(), set()
    for path in _sources():
        rel = str(path.relative_to(REPO))
        if PB in path.parents or rel == KSERVE_CONTRACT:
            continue
        text = path.read_text()
        if re.search(r"\b\w+_pb2\b(?!_grpc)", text):
            message_users.add(rel)
        if re.search(r"\b\w+_pb2_grpc\b", text):
            stub_users.add(rel)
    assert message_users <= {"serving/convert.py"}
    assert stub_users <= {
        "serving/server.py",
        "serving/servicer.py",
        KSERVE,
        "genserve/client.py",
        "genserve/loadgen.py",
    }


def test_only_the_kserve_modules_import_tritonclients_generated_modules_and_nothing_else_generated():
    """The contract module imports the messages, the servicer the service code; neither imports
    genserve's own generated code."""
    users = {}
    for path in _sources():
        triton = {m for m in _imported_modules(path) if m.split(".")[0] == "tritonclient"}
        if triton:
            users[str(path.relative_to(REPO))] = triton
    assert users == {KSERVE_CONTRACT: TRITON_MESSAGES, KSERVE: TRITON_SERVICE}
    assert TRITON_MESSAGES | TRITON_SERVICE == TRITON_GENERATED
    for rel, modules in users.items():
        names = set(re.findall(r"\b\w+_pb2(?:_grpc)?\b", (REPO / rel).read_text()))
        assert names == {m.rpartition(".")[2] for m in modules}, rel  # none of genserve's stubs


def test_kserve_generated_code_is_a_declared_dependency_and_in_the_default_pool():
    """tritonclient is a runtime dependency, the plain package (its [grpc] extra pins protobuf<7),
    and its modules register in protobuf's default pool, which server reflection reads."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(re.fullmatch(r"tritonclient\s*>=\s*[\d.]+(,\s*<\s*[\d.]+)?", d) for d in project["dependencies"])
    code = (
        "from google.protobuf import descriptor_pool; from genserve.serving import kserve; "
        "print(descriptor_pool.Default().FindServiceByName(kserve.SERVICE_NAME).file.name)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "grpc_service.proto"


def test_serving_and_client_paths_do_not_import_torch():
    code = (
        "import sys, genserve.cli, genserve.client, genserve.serving.server; genserve.cli.build_parser(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
