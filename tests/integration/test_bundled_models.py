"""The trained models shipped in ``models/``: valid folders, and samples that the evaluation
classifier judges as digits.

The FID bounds are the foundation issue's (DDPM within 3x, DCGAN within 6x of the real-vs-real
floor) and hold. Its confidence bar (>= 90% of samples classified with p >= 0.9) holds for the
1000-step DDPM at seed 2026 (0.98), for 50-step DDIM (0.93-0.95 at seeds 2026 and 1-4, 0.92 at
this test's seed 1234; see docs/models.md and the quality runs under benchmarks/results/runs/)
and for the DCGAN at every seed tried (0.93-1.00 at n = 100, seeds 1-20). ``min_confident`` and
MIN_CONFIDENT are regression guards a few points under what the models reach, not the target;
raise them when the models improve."""

from pathlib import Path

import numpy as np
import pytest

from genserve.manifest import Manifest
from genserve.serving.domain import GenerateRequest
from genserve.serving.runner import ModelRunner
from genserve.signature import ModelKind
from genserve.training.evaluate import Evaluator

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLED = {"ddpm-mnist": ModelKind.DIFFUSION, "dcgan-mnist": ModelKind.SAMPLER}
MIN_CONFIDENT = 0.88  # full 1000-step DDPM: a guard under its 0.98 at seed 2026 (the issue asks 0.90)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator()


def test_evaluation_classifier_is_accurate_on_held_out_digits(evaluator):
    assert evaluator.classifier_accuracy >= 0.97
    held_out = evaluator.held_out
    _, probs = evaluator.features_and_probs(held_out.images)
    assert (probs.argmax(1) == held_out.labels).mean() == pytest.approx(evaluator.classifier_accuracy, abs=1e-3)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_folder_is_valid_and_was_evaluated(name):
    manifest = Manifest.load(MODELS / name)  # verifies every file hash
    assert manifest.kind is BUNDLED[name]
    assert manifest.source["checkpoint_step"] > 0, "bundled weights must be trained"
    for key in ("fid", "fid_floor", "confident_fraction", "num_classes_present"):
        assert key in manifest.metrics, f"{name} manifest lacks metric {key}; run genserve eval --update-manifest"


@pytest.mark.parametrize(
    ("name", "request_kwargs", "max_fid_ratio", "min_confident"),
    [
        ("dcgan-mnist", {}, 6.0, 0.90),  # the bar: the DCGAN clears it at every seed tried
        ("ddpm-mnist", {"steps": 50}, 3.0, 0.88),  # DDIM, eta = 0: the full 1000-step check is marked slow below
    ],
)
def test_bundled_model_samples_are_recognisable_digits(evaluator, name, request_kwargs, max_fid_ratio, min_confident):
    runner = ModelRunner(MODELS / name)
    images = runner.generate(GenerateRequest(name, 100, seed=1234, **request_kwargs))
    report = evaluator.evaluate(images[..., 0])
    assert report.confident_fraction >= min_confident, report
    assert report.num_classes_present == 10, report
    assert report.fid_ratio <= max_fid_ratio, report


@pytest.mark.slow
def test_ddpm_full_1000_step_samples_are_recognisable_digits(evaluator):
    runner = ModelRunner(MODELS / "ddpm-mnist")
    images = runner.generate(GenerateRequest("ddpm-mnist", 100, seed=1234))
    report = evaluator.evaluate(images[..., 0])
    assert report.confident_fraction >= MIN_CONFIDENT and report.num_classes_present == 10, report
    assert report.fid_ratio <= 3.0, report
    assert np.unique(images.reshape(100, -1), axis=0).shape[0] == 100
