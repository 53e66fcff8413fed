"""Sample quality, judged by the evaluation classifier.

- FID (Heusel et al. 2017) in the classifier's penultimate feature space against held-out
  real digits, and the real-vs-real floor: the FID of as many *real* (train-split) digits
  against the same reference. Both are averaged over ``draws`` reference subsets, because
  FID at 100 samples is noisy and biased upwards; only the ratio to the floor is meaningful.
- The fraction of samples the classifier assigns to one class with probability >= 0.9, and
  the histogram of predicted classes (a collapsed generator misses classes).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from genserve.nets import load_checkpoint
from genserve.training.data import mnist_splits, to_model_range

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "assets" / "classifier-mnist"
CONFIDENCE = 0.9


@dataclass
class QualityReport:
    num_samples: int
    fid: float
    fid_floor: float
    fid_ratio: float  # fid / fid_floor; 1.0 is as good as real data
    confident_fraction: float
    class_histogram: list[int]
    num_classes_present: int
    classifier_accuracy: float
    draws: int

    def to_dict(self) -> dict:
        return asdict(self)


class Evaluator:
    def __init__(self, classifier_dir: Path = DEFAULT_CLASSIFIER):
        self.model, meta = load_checkpoint(classifier_dir)
        self.classifier_accuracy = float(meta.get("held_out_accuracy", float("nan")))
        self.train, self.held_out = mnist_splits()

    @torch.no_grad()
    def features_and_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 28, 28) -> features (N, D) float64 and class probabilities (N, 10)."""
        x = to_model_range(np.asarray(images).reshape(-1, 28, 28))
        feats, probs = [], []
        for i in range(0, len(x), 500):
            f = self.model.features(x[i : i + 500])
            feats.append(f.double().numpy())
            probs.append(torch.softmax(self.model.head(f), dim=1).double().numpy())
        return np.concatenate(feats), np.concatenate(probs)

    def evaluate(self, images: np.ndarray, draws: int = 5, seed: int = 0) -> QualityReport:
        images = np.asarray(images).reshape(-1, 28, 28)
        n = len(images)
        if n < 2 or n > len(self.held_out.images):
            raise ValueError(f"need between 2 and {len(self.held_out.images)} samples, got {n}")
        gen_feats, probs = self.features_and_probs(images)
        rng = np.random.default_rng(seed)
        fids, floors = [], []
        for _ in range(draws):
            ref = self.held_out.images[rng.choice(len(self.held_out.images), n, replace=False)]
            real = self.train.images[rng.choice(len(self.train.images), n, replace=False)]
            ref_feats, _ = self.features_and_probs(ref)
            real_feats, _ = self.features_and_probs(real)
            fids.append(fid(gen_feats, ref_feats))
            floors.append(fid(real_feats, ref_feats))
        hist = np.bincount(probs.argmax(1), minlength=10)
        fid_mean, floor_mean = float(np.mean(fids)), float(np.mean(floors))
        return QualityReport(
            num_samples=n,
            fid=round(fid_mean, 3),
            fid_floor=round(floor_mean, 3),
            fid_ratio=round(fid_mean / floor_mean, 3),
            confident_fraction=round(float((probs.max(1) >= CONFIDENCE).mean()), 4),
            class_histogram=hist.tolist(),
            num_classes_present=int((hist > 0).sum()),
            classifier_accuracy=self.classifier_accuracy,
            draws=draws,
        )


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½), with the usual epsilon fallback of pytorch-fid."""
    diff = mu1 - mu2
    with warnings.catch_warnings():  # ReLU features give singular covariances at 100 samples; expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    return frechet_distance(
        feats_a.mean(0), np.cov(feats_a, rowvar=False), feats_b.mean(0), np.cov(feats_b, rowvar=False)
    )


def samples_from_folder(folder: Path, n: int, seed: int, steps: int | None = None) -> np.ndarray:
    """Generate through the serving core in-process (ONNX Runtime): uint8 (N, H, W, C)."""
    from genserve.serving.domain import GenerateRequest
    from genserve.serving.runner import ModelRunner

    runner = ModelRunner(folder)
    return runner.generate(GenerateRequest(runner.name, n, seed=seed, steps=steps))


def record_metrics(folder: Path, report: QualityReport, settings: dict) -> None:
    """Store the report in the model's manifest, tied to the ONNX graph it was measured on."""
    from genserve import manifest as mf

    manifest = mf.Manifest.load(folder)
    metrics = {
        **report.to_dict(),
        "eval": settings,
        "onnx_sha256": manifest.files.get(mf.ONNX_FILE),
    }
    mf.Manifest(**{**manifest.__dict__, "metrics": metrics}).write(folder)
