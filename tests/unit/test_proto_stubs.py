"""The generated-code policy (protos/README.md): committed stubs equal a fresh generation, and
only the conversion module imports generated message code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PB = REPO / "serving" / "pb"
GENERATED = ["genserve_pb2.py", "genserve_pb2.pyi", "genserve_pb2_grpc.py"]


def test_committed_stubs_are_what_protos_generate_writes(tmp_path: Path):
    subprocess.run([sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (PB / name).read_bytes(), (
            f"serving/pb/{name} is stale: run .venv/bin/python protos/generate.py"
        )


def test_only_convert_imports_generated_messages_and_only_server_and_client_import_stubs():
    sources = [p for folder in ("genserve", "serving", "export", "training") for p in (REPO / folder).rglob("*.py")]
    message_users, stub_users = set(), set()
    for path in sources:
        if PB in path.parents:
            continue
        text = path.read_text()
        rel = str(path.relative_to(REPO))
        if re.search(r"\b\w+_pb2\b(?!_grpc)", text):
            message_users.add(rel)
        if re.search(r"\b\w+_pb2_grpc\b", text):
            stub_users.add(rel)
    assert message_users <= {"serving/convert.py"}
    assert stub_users <= {"serving/server.py", "serving/servicer.py", "genserve/client.py", "genserve/loadgen.py"}


def test_serving_and_client_paths_do_not_import_torch():
    code = (
        "import sys, genserve.cli, genserve.client, genserve.serving.server; genserve.cli.build_parser(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
