"""Sample quality, judged by the evaluation classifier.

- FID (Heusel et al. 2017) in the classifier's penultimate feature space against held-out
  real digits, and the real-vs-real floor: the FID of as many *real* (train-split) digits
  against the same reference. Both are averaged over ``draws`` reference subsets, because
  FID at 100 samples is noisy and biased upwards; only the ratio to the floor is meaningful.
- The fraction of samples the classifier assigns to one class with probability >= 0.9, and
  the histogram of predicted classes (a collapsed generator misses classes).
- The Inception Score (Salimans et al. 2016) with the classifier's class probabilities,
  exp(E_x KL(p(y|x) || p(y))), on the whole sample set (no splits: 100 samples are one split);
  between 1 and 10, higher for confident *and* varied classes. Its reference is the IS of as
  many real (train-split) digits, averaged over the floor's draws: the score depends on the
  sample count, so only an equal-sized real set says what "as good as real" is.
- The squared kernel MMD of KID (Binkowski et al. 2018): the unbiased estimator with the cubic
  polynomial kernel k(x, y) = (x.y / d + 1)^3, d = 64, between the samples' features and the
  held-out reference, and real-vs-real, averaged over the same draws as FID. Unlike FID it is
  unbiased at any sample count (0 in expectation for real data; it can go slightly negative).
- Precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls
  around its points reaching their k-th nearest neighbour (k = 3) in the set; precision is the
  fraction of samples inside the real manifold (fidelity), recall the fraction of real digits
  inside the samples' manifold (coverage: a collapsed generator has low recall). Against the
  same held-out reference, with real-vs-real as the reference values, averaged over the draws.

Models of issue 5 say in their manifest (``source.task``) what they do, and ``evaluate_task``
measures what fits: FID for every model that produces digits, the fraction of samples of the
asked class for a class-conditional sampler, PSNR/SSIM against the real digit (and bicubic
upsampling as the baseline) for super-resolution, and whether MNIST -> digits -> MNIST keeps
the class for CycleGAN. Translators are fed held-out inputs made by the recipes in
``training/data.py``, the ones quoted in their manifests.
"""

from __future__ import annotations

import enum
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from scipy.spatial.distance import cdist
from scipy.special import rel_entr

from genserve.nets import load_checkpoint
from genserve.training import data
from genserve.training.data import mnist_splits, to_model_range, to_uint8
from genserve.training.loop import server_latents

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "assets" / "classifier-mnist"
CONFIDENCE = 0.9
NEAREST_K = 3  # Kynkaanniemi et al.'s k for the k-NN manifolds of precision and recall


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
    inception_score: float
    inception_score_real: float  # IS of as many real digits: what "as good as real" scores
    mmd: float  # squared KID-kernel MMD to held-out digits; 0 in expectation for real data
    mmd_real: float
    precision: float  # fraction of samples inside the real digits' k-NN manifold
    recall: float  # fraction of real digits inside the samples' k-NN manifold
    precision_real: float
    recall_real: float

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
        if n <= NEAREST_K or n > len(self.held_out.images):  # k-NN manifolds need more than k points
            raise ValueError(f"need between {NEAREST_K + 1} and {len(self.held_out.images)} samples, got {n}")
        gen_feats, probs = self.features_and_probs(images)
        rng = np.random.default_rng(seed)
        fids, floors, real_scores = [], [], []
        gen_vs_ref, real_vs_ref = [], []  # (mmd, precision, recall) per draw
        for _ in range(draws):
            ref = self.held_out.images[rng.choice(len(self.held_out.images), n, replace=False)]
            real = self.train.images[rng.choice(len(self.train.images), n, replace=False)]
            ref_feats, _ = self.features_and_probs(ref)
            real_feats, real_probs = self.features_and_probs(real)
            fids.append(fid(gen_feats, ref_feats))
            floors.append(fid(real_feats, ref_feats))
            real_scores.append(inception_score(real_probs))
            gen_vs_ref.append((mmd(gen_feats, ref_feats), *precision_recall(ref_feats, gen_feats)))
            real_vs_ref.append((mmd(real_feats, ref_feats), *precision_recall(ref_feats, real_feats)))
        hist = np.bincount(probs.argmax(1), minlength=10)
        fid_mean, floor_mean = float(np.mean(fids)), float(np.mean(floors))
        gen_mmd, gen_precision, gen_recall = np.mean(gen_vs_ref, axis=0)
        real_mmd, real_precision, real_recall = np.mean(real_vs_ref, axis=0)
        return QualityReport(
            num_samples=n,
            fid=round(fid_mean, 3),
            fid_floor=round(floor_mean, 3),
            fid_ratio=round(fid_mean / floor_mean, 3),
            confident_fraction=confident_fraction(probs),
            class_histogram=hist.tolist(),
            num_classes_present=int((hist > 0).sum()),
            classifier_accuracy=self.classifier_accuracy,
            draws=draws,
            inception_score=round(inception_score(probs), 3),
            inception_score_real=round(float(np.mean(real_scores)), 3),
            mmd=round(float(gen_mmd), 3),
            mmd_real=round(float(real_mmd), 3),
            precision=round(float(gen_precision), 4),
            recall=round(float(gen_recall), 4),
            precision_real=round(float(real_precision), 4),
            recall_real=round(float(real_recall), 4),
        )


def confident_fraction(probs: np.ndarray) -> float:
    """The fraction of samples the classifier assigns to one class with p >= CONFIDENCE."""
    return round(float((probs.max(1) >= CONFIDENCE).mean()), 4)


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


def inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities (N, C), p(y) their mean: 1 when every
    sample gets the same distribution, C when each is certain and the classes are equally used."""
    marginal = probs.mean(0, keepdims=True)  # (1, C)
    return float(np.exp(rel_entr(probs, marginal).sum(1).mean()))  # rel_entr: 0 log 0 = 0


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel (x.y / d + 1)^3 between the rows of (N, d) and (M, d): (N, M)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Unbiased squared MMD (Gretton et al. 2012) with KID's kernel: the within-set means leave out
    the diagonal k(x, x), so that two samples of one distribution score 0 in expectation."""
    m, n = len(feats_a), len(feats_b)
    k_aa, k_bb = polynomial_kernel(feats_a, feats_a), polynomial_kernel(feats_b, feats_b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * polynomial_kernel(feats_a, feats_b).mean())


def manifold_radii(feats: np.ndarray, k: int = NEAREST_K) -> np.ndarray:
    """Distance of each row of (N, d) to its k-th nearest other row: (N,)."""
    if len(feats) <= k:
        raise ValueError(f"a k-NN manifold with k = {k} needs more than {k} points, got {len(feats)}")
    # column 0 of each sorted row is the point itself (0); column k its k-th neighbour, duplicates included
    return np.sort(cdist(feats, feats), axis=1)[:, k]


def coverage(manifold: np.ndarray, queries: np.ndarray, k: int = NEAREST_K) -> float:
    """Fraction of ``queries`` (M, d) within the k-NN ball of some row of ``manifold`` (N, d)."""
    inside = cdist(queries, manifold) <= manifold_radii(manifold, k)[None, :]  # (M, N)
    return float(inside.any(1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEAREST_K) -> tuple[float, float]:
    """Kynkaanniemi et al. (2019): precision, the fraction of ``fake`` inside the real manifold, and
    recall, the fraction of ``real`` inside the fake manifold; features (N, d) and (M, d)."""
    return coverage(real, fake, k), coverage(fake, real, k)


def samples_from_folder(
    folder: Path,
    n: int,
    seed: int,
    steps: int | None = None,
    guidance: float | None = None,
    labels: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """Images 0 .. n-1 of ``seed`` through the serving core in-process (ONNX Runtime): uint8
    (N, H, W, C), what ``Generate(model, n, seed, steps, guidance=guidance, **options)`` returns
    (``options``: temperature, truncation, mix_seed, mix_layer). Run in engine batches rather than as
    one request, because a request holds at most ``MAX_IMAGES_PER_REQUEST`` images and an
    evaluation may want more (FID on 1,000 samples). ``labels`` (n,) gives a class-conditional model
    the class of each image."""
    from genserve.serving.domain import GenerateRequest
    from genserve.serving.runner import ModelRunner

    runner = ModelRunner(folder)
    schedule = GenerateRequest(runner.name, 1, seed=seed, steps=steps, guidance=guidance, **options)
    runner.validate(schedule)  # steps only for a diffusion model, options in range
    iterative = runner.manifest.kind.iterative
    chunks = []
    for start in range(0, n, runner.engine.max_batch_size):
        index = np.arange(start, min(n, start + runner.engine.max_batch_size))
        seeds = np.full(len(index), seed, dtype=np.int64)
        chunk_labels = None if labels is None else labels[index]
        if iterative:
            chunks.append(runner.diffuse_images(seeds, index, schedule, labels=chunk_labels))
        else:
            chunks.append(runner.sample_images(seeds, index, labels=chunk_labels, request=schedule))
    return np.concatenate(chunks)


def code_classes(evaluator: Evaluator, folder: Path, samples: np.ndarray, seed: int) -> list[dict] | None:
    """For a DCGAN with an InfoGAN categorical code, whose ``samples`` are ``samples_from_folder(folder,
    n, seed)``: per code value, how many samples drew it, the class the classifier gave most of them,
    that class's share ("purity") and the confident fraction. None (nothing classified) for a model
    without a code."""
    import json

    from genserve import manifest as mf

    config = json.loads((folder / mf.WEIGHTS_DIR / "config.json").read_text())["config"]
    k = config.get("categorical_code", 0)
    if not k:
        return None
    _, probs = evaluator.features_and_probs(samples)
    codes = server_latents(len(probs), config["latent_dim"], seed).numpy()[:, :k].argmax(1)
    classes = probs.argmax(1)
    report = []
    for code in range(k):
        drew = codes == code
        hist = np.bincount(classes[drew], minlength=probs.shape[1])
        report.append(
            {
                "code": code,
                "samples": int(drew.sum()),
                "top_class": int(hist.argmax()),
                "purity": round(float(hist.max() / max(1, drew.sum())), 3),
                "confident": confident_fraction(probs[drew]) if drew.any() else None,
            }
        )
    return report


def confidence_spread(
    evaluator: Evaluator, folder: Path, n: int, seeds: Sequence[int], steps: int | None = None
) -> dict:
    """The confident fraction of ``n`` samples at each of ``seeds``: how much a 100-sample verdict
    (the issue's "≥ 90% of 100 samples") depends on the seed it happened to use."""
    by_seed = []
    for seed in seeds:
        _, probs = evaluator.features_and_probs(samples_from_folder(folder, n, seed, steps)[..., 0])
        by_seed.append(confident_fraction(probs))
    values = np.array(by_seed)
    return {
        "num_samples_per_seed": n,
        "seeds": list(seeds),
        "confident_by_seed": by_seed,
        "mean": round(float(values.mean()), 4),
        "median": round(float(np.median(values)), 4),
        "min": float(values.min()),
        "max": float(values.max()),
        f"seeds_at_or_above_{CONFIDENCE}": int((values >= CONFIDENCE).sum()),
    }


def record_metrics(folder: Path, report: QualityReport | dict, settings: dict) -> None:
    """Store the report in the model's manifest, tied to the ONNX graph it was measured on."""
    from genserve import manifest as mf

    manifest = mf.Manifest.load(folder)
    metrics = {
        **(report if isinstance(report, dict) else report.to_dict()),
        "eval": settings,
        "onnx_sha256": manifest.files.get(mf.ONNX_FILE),
    }
    mf.Manifest(**{**manifest.__dict__, "metrics": metrics}).write(folder)


class Task(enum.Enum):
    """What a model of issue 5 does, as its manifest's ``source.task`` says; picks its metrics."""

    SAMPLE = "sample"
    CONDITIONAL = "conditional"
    RECONSTRUCT = "reconstruct"
    EDGES2MNIST = "edges2mnist"
    SUPERRES = "superres"
    MNIST2DIGITS = "mnist2digits"
    DIGITS2MNIST = "digits2mnist"


class OnnxGraph:
    """A model folder's ``model.onnx`` in ONNX Runtime (CPU): what is served, evaluated directly."""

    def __init__(self, folder: Path, batch: int = 250):
        import onnxruntime as ort

        from genserve import manifest as mf

        self.manifest = mf.Manifest.load(folder)
        self.session = ort.InferenceSession(str(folder / mf.ONNX_FILE), providers=["CPUExecutionProvider"])
        self.batch = min(batch, self.manifest.max_batch_size)

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        """Feeds (N, ...) -> the graph's output (N, C, H, W), run in batches the manifest allows."""
        n = len(next(iter(inputs.values())))
        outputs = [
            self.session.run(None, {k: v[i : i + self.batch] for k, v in inputs.items()})[0]
            for i in range(0, n, self.batch)
        ]
        return np.concatenate(outputs)

    def translate(self, images: np.ndarray) -> np.ndarray:
        """uint8 inputs (N, h, w) -> uint8 outputs (N, 28, 28), the server's conversions both ways."""
        return to_uint8(self(source=to_model_range(images).numpy()))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of 10 log10(255^2 / MSE), uint8 (N, H, W) each."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) over images: 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
    K2 = 0.03, data range 255, reflected borders, averaged over every pixel; uint8 (N, H, W)."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: gaussian_filter(x, sigma=(0, 1.5, 1.5), truncate=3.5, mode="reflect")  # noqa: E731
    x, y = a.astype(np.float64), b.astype(np.float64)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.reshape(len(a), -1).mean(1).mean())


def bicubic_upsample(low: np.ndarray, factor: int = 4) -> np.ndarray:
    """The super-resolution baseline: uint8 (N, h, w) -> uint8 (N, factor h, factor w), bicubic
    (torch, align_corners=False) in model range, clipped."""
    x = torch.nn.functional.interpolate(to_model_range(low), scale_factor=factor, mode="bicubic", align_corners=False)
    return to_uint8(x.clamp(-1.0, 1.0))


def _fid_of(evaluator: Evaluator, images: np.ndarray, prefix: str = "") -> dict[str, float]:
    """The quality report of a translator's outputs, less what only a sampler's report needs."""
    omit = {"class_histogram", "classifier_accuracy", "draws"}
    return {prefix + k: v for k, v in evaluator.evaluate(images).to_dict().items() if k not in omit}


def _pair_metrics(evaluator: Evaluator, outputs: np.ndarray, targets: np.ndarray, prefix: str = "") -> dict:
    """FID of ``outputs`` against held-out digits, and their PSNR/SSIM against the true digits."""
    return {
        **_fid_of(evaluator, outputs, prefix),
        prefix + "psnr": round(psnr(outputs, targets), 3),
        prefix + "ssim": round(ssim(outputs, targets), 4),
    }


def class_accuracy(evaluator: Evaluator, images: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    """Fraction of images the classifier assigns to ``labels``, overall and per class 0..9."""
    _, probs = evaluator.features_and_probs(images)
    hit = probs.argmax(1) == labels
    return round(float(hit.mean()), 4), [round(float(hit[labels == c].mean()), 4) for c in range(10)]


def _cycle_metrics(evaluator: Evaluator, a2b: OnnxGraph, b2a: OnnxGraph) -> dict:
    """MNIST -> digits -> MNIST on every held-out MNIST digit: does the class survive? Also the
    classifier's verdict on the digits-style images themselves (an MNIST classifier, so only indicative)."""
    held_out = evaluator.held_out
    to_b = a2b.translate(held_out.images)
    back = b2a.translate(to_b)
    kept, per_class = class_accuracy(evaluator, back, held_out.labels)
    kept_in_b, _ = class_accuracy(evaluator, to_b, held_out.labels)
    return {
        "cycle_class_kept": kept,
        "cycle_class_kept_per_class": per_class,
        "cycle_num_digits": len(back),
        "class_kept_in_digits_style": kept_in_b,
        "cycle_l1": round(float(np.abs(back.astype(np.float64) - held_out.images).mean() / 255.0), 4),
    }


def evaluate_task(
    folder: Path,
    num_samples: int | None,
    seed: int,
    evaluator: Evaluator,
    steps: int | None = None,
    guidance: float | None = None,
    **options: Any,
) -> tuple[dict, np.ndarray]:
    """Metrics of an issue-5 model folder, and a 10x10 grid's worth of uint8 tiles (100, 28, 28):
    samples for samplers, alternating rows of 10 inputs and their 10 outputs for translators.
    ``steps`` applies to a diffusion model, ``guidance`` to a guided class-conditional one, ``options``
    (temperature, truncation) to the models that take them."""
    graph = OnnxGraph(folder)
    task = Task(graph.manifest.source["task"])
    held_out = evaluator.held_out
    if task in (Task.SAMPLE, Task.CONDITIONAL):
        n = num_samples or 100
        feeds: dict[str, Any] = {}
        if task is Task.CONDITIONAL:
            feeds["label"] = np.arange(n, dtype=np.int64) % 10  # column j of the grid: class j
        samples = samples_from_folder(folder, n, seed, steps, guidance, feeds.get("label"), **options)[..., 0]
        metrics: dict[str, Any] = evaluator.evaluate(samples).to_dict()
        if task is Task.CONDITIONAL:
            metrics["asked_class_fraction"], metrics["asked_class_fraction_per_class"] = class_accuracy(
                evaluator, samples, feeds["label"]
            )
        return metrics, samples[:100]
    n = num_samples or len(held_out.images)
    digits, labels = held_out.images[:n], held_out.labels[:n]
    if task is Task.DIGITS2MNIST:
        digits_held = data.digits_splits()[1]
        inputs, labels = digits_held.images[:n], digits_held.labels[:n]
        outputs = graph.translate(inputs)
        metrics = _fid_of(evaluator, outputs)
        metrics["class_accuracy"], metrics["class_accuracy_per_class"] = class_accuracy(evaluator, outputs, labels)
        metrics["input_class_accuracy"], _ = class_accuracy(evaluator, inputs, labels)
        metrics.update(_cycle_metrics(evaluator, OnnxGraph(folder.parent / graph.manifest.source["partner"]), graph))
        return metrics, _pairs_grid(inputs, outputs)
    inputs = {
        Task.RECONSTRUCT: lambda d: d,
        Task.EDGES2MNIST: data.edge_map,
        Task.SUPERRES: data.low_res,
        Task.MNIST2DIGITS: lambda d: d,
    }[task](digits)
    outputs = graph.translate(inputs)
    if task is Task.MNIST2DIGITS:
        metrics = _cycle_metrics(evaluator, graph, OnnxGraph(folder.parent / graph.manifest.source["partner"]))
        return metrics, _pairs_grid(inputs, outputs)
    metrics = _pair_metrics(evaluator, outputs, digits)
    if task is Task.SUPERRES:
        metrics.update(_pair_metrics(evaluator, bicubic_upsample(inputs), digits, prefix="bicubic_"))
    return metrics, _pairs_grid(inputs, outputs)


def _pairs_grid(inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Rows of 10 inputs (scaled up to 28x28 by pixel repetition) each followed by a row of their
    outputs; 50 pairs spread evenly over the inputs (the held-out sets are ordered by class)."""
    pick = np.linspace(0, len(inputs) - 1, 50).astype(int)
    inputs, outputs = inputs[pick], outputs[pick]
    scale = outputs.shape[-1] // inputs.shape[-1]
    big = inputs.repeat(scale, axis=1).repeat(scale, axis=2)
    rows = [block for i in range(0, 50, 10) for block in (big[i : i + 10], outputs[i : i + 10])]
    return np.concatenate(rows)
