"""The user's guide stays a guide: README.md within its size budget, and every relative link and
every results file named in README.md and docs/*.md exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_MAX_BYTES = 12_288
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # ](target) or ](target "title")
RESULTS_PATH = re.compile(r"benchmarks/results/[\w./-]+")  # followed by "<": a template, e.g. gpu/<date>/
EXTERNAL = ("http://", "https://", "mailto:")


def _relative_links(text: str) -> list[str]:
    """Link targets that point into the repository, without their #anchor."""
    targets = []
    for target in LINK.findall(text):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def _name(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def test_readme_fits_the_size_budget():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; at most {README_MAX_BYTES} (move depth to docs/)"


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_relative_links_resolve_to_existing_files(doc: Path):
    missing = [t for t in _relative_links(doc.read_text(encoding="utf-8")) if not (doc.parent / t).exists()]
    assert not missing, f"{_name(doc)} links to missing paths: {missing}"


def _results_paths(text: str) -> set[str]:
    """benchmarks/results/ paths the text names, except templates of folders yet to be written."""
    return {m.group().rstrip(".") for m in RESULTS_PATH.finditer(text) if not text.startswith("<", m.end())}


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_cited_results_files_exist(doc: Path):
    cited = _results_paths(doc.read_text(encoding="utf-8"))
    missing = sorted(p for p in cited if not (REPO / p).exists())
    assert not missing, f"{_name(doc)} cites results that are not committed: {missing}"


def test_link_finder_skips_external_and_anchor_only_links():
    text = '[a](docs/x.md#part) [b](https://example.org) [c](#local) [d](mailto:a@b.c) [e](../y.md "t")'
    assert _relative_links(text) == ["docs/x.md", "../y.md"]


def test_results_path_finder_skips_templates_and_trailing_full_stops():
    text = "see benchmarks/results/batching.json. Later: `benchmarks/results/gpu/<date>-<device>/`"
    assert _results_paths(text) == {"benchmarks/results/batching.json"}
