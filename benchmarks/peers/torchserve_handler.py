"""TorchServe's handler for genserve's model folders: the Python side of the TorchServe peer of
``benchmarks/vs_peers.py`` (the server itself is TorchServe's Java frontend, started by
``benchmarks/peers/launch.py``).

``torch-model-archiver`` packs this file with ``peer_models.py`` and a model config that names
the model folder (``genserve: {folder, threads}``) and TorchServe's batching (``batchSize`` 64,
``maxBatchDelay``, one worker). TorchServe's batch aggregator hands ``handle`` a list of requests;
each is the ``input`` map of a gRPC ``Predictions`` call: ``seed`` and, for diffusion, ``steps``,
as decimal ASCII. Each response is the image's uint8 (H, W, C) bytes. The model work per batch is
``peer_models.PeerModel``: genserve's own ``ModelRunner`` on the same ``model.onnx``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from peer_models import PeerModel

_model: PeerModel | None = None


def handle(data: list[dict] | None, context) -> list[bytes] | None:
    """TorchServe's module-level entry point: called once with ``data=None`` when the worker loads
    the model, then once per batch."""
    global _model
    if _model is None:
        config = context.model_yaml_config["genserve"]
        _model = PeerModel(Path(config["folder"]), int(config["threads"]))
    if data is None:
        return None
    seeds = np.array([int(row["seed"]) for row in data], np.int64)  # (B,)
    steps = np.array([int(row.get("steps") or 0) for row in data], np.int64)  # (B,), 0 = default
    return [image.tobytes() for image in _model.infer(seeds, steps)]
