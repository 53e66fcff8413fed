"""Where the verbs look when no flag says otherwise: the repository's folders and the local server."""

from __future__ import annotations

from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:50051"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = REPO_ROOT / "models"
DEFAULT_CHECKPOINTS = REPO_ROOT / "checkpoints"
# The evaluation classifier is small and every eval needs it, so it is committed.
DEFAULT_CLASSIFIER = REPO_ROOT / "assets" / "classifier-mnist"
