"""Where the verbs look when no flag says otherwise: the checkout's folders (when genserve runs from
one), the working directory otherwise, and the local server.

``GENSERVE_MODELS`` names the model repository for every verb that reads or writes one (serve, eval,
export), so an installed genserve finds a repository without ``--models`` each time."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:50051"


def _checkout() -> Path | None:
    """The repository genserve runs from (an editable install), or None (installed from a wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "serving").is_dir() else None


REPO_ROOT = _checkout()
_BASE = REPO_ROOT or Path.cwd()
DEFAULT_MODELS = Path(os.environ["GENSERVE_MODELS"]) if os.environ.get("GENSERVE_MODELS") else _BASE / "models"
DEFAULT_CHECKPOINTS = _BASE / "checkpoints"
# The evaluation classifier is small and every eval needs it, so the checkout carries it.
DEFAULT_CLASSIFIER = _BASE / "assets" / "classifier-mnist"
