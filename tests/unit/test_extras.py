"""pyproject's dependencies: the base install serves and is a client without torch, and no install
puts onnxruntime and onnxruntime-gpu side by side.

Both ONNX Runtime wheels provide the same ``onnxruntime`` module, and the one installed last
overwrites the other's files. The base brings the CPU one; no extra, once its self-references
(``genserve[train]``) are resolved, brings the GPU one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


def load_project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def requirement_names(project: dict, requirements: list[str], seen: frozenset[str] = frozenset()) -> set[str]:
    """Canonical names of what ``requirements`` install, following the project's own extras."""
    own = canonicalize_name(project["name"])
    extras = project.get("optional-dependencies", {})
    names: set[str] = set()
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) != own:
            names.add(canonicalize_name(req.name))
            continue
        for extra in sorted(req.extras - seen):  # ``seen`` stops a cycle of self-references
            names |= requirement_names(project, extras[extra], seen | {extra})
    return names


def installs(project: dict, extra: str | None = None) -> set[str]:
    """What ``pip install genserve[extra]`` (plain ``genserve`` for None) installs directly."""
    names = requirement_names(project, project.get("dependencies", []))
    if extra is not None:
        names |= requirement_names(project, project["optional-dependencies"][extra], frozenset({extra}))
    return names


def runtime_clashes(project: dict) -> list[str]:
    """Every install (the base, each extra) that would bring both ONNX Runtime wheels, in words."""
    clashes = []
    for extra in [None, *project.get("optional-dependencies", {})]:
        if RUNTIMES.issubset(installs(project, extra)):
            clashes.append(f"genserve[{extra}]" if extra else "genserve")
    return clashes


def test_no_install_of_genserve_brings_both_onnx_runtime_wheels():
    assert runtime_clashes(load_project()) == []


def test_the_base_install_serves_on_onnx_runtimes_cpu_wheel_without_torch():
    base = installs(load_project())
    assert base & RUNTIMES == {"onnxruntime"}
    assert {"grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "numpy", "pillow"} <= base
    assert "torch" not in base


def test_the_client_extra_brings_no_torch_and_training_does():
    project = load_project()
    assert "torch" not in installs(project, "client")
    assert "torch" in installs(project, "train") and "torch" in installs(project, "dev")


def test_no_extra_brings_onnxruntime_gpu():
    project = load_project()
    assert [e for e in project["optional-dependencies"] if "onnxruntime-gpu" in installs(project, e)] == []


def test_the_check_catches_the_gpu_runtime_in_an_extra_and_through_self_references():
    project = load_project()
    extras = dict(project["optional-dependencies"], gpu=["onnxruntime-gpu>=1.18"], all=["genserve[gpu,dev]"])
    assert set(runtime_clashes(dict(project, **{"optional-dependencies": extras}))) == {
        "genserve[gpu]",
        "genserve[all]",
    }
