"""pyproject's extras: no install puts onnxruntime and onnxruntime-gpu side by side.

Both wheels provide the same ``onnxruntime`` module, and the one installed last overwrites the
other's files. So neither is a base dependency, and no extra, once its self-references
(``genserve[cpu]``) are resolved, brings both.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
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


def test_onnx_runtime_is_not_a_base_dependency():
    assert installs(load_project()) & RUNTIMES == set()


@pytest.mark.parametrize(("extra", "runtime"), [("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")])
def test_the_cpu_and_gpu_extras_each_bring_their_runtime(extra, runtime):
    assert installs(load_project(), extra) & RUNTIMES == {runtime}


def test_dev_brings_the_cpu_runtime_the_tests_run_on():
    assert installs(load_project(), "dev") & RUNTIMES == {"onnxruntime"}


def test_the_check_catches_a_runtime_in_the_base_and_both_through_self_references():
    project = load_project()
    base_again = dict(project, dependencies=[*project["dependencies"], "onnxruntime>=1.18"])
    assert "genserve[gpu]" in runtime_clashes(base_again)
    extras = dict(project["optional-dependencies"], dev=["genserve[cpu]", "genserve[all]"], all=["genserve[gpu,dev]"])
    assert set(runtime_clashes(dict(project, **{"optional-dependencies": extras}))) == {
        "genserve[dev]",
        "genserve[all]",
    }
