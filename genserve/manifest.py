"""The model folder: the contract between export and serving.

    models/<name>/manifest.json   what the model is and how to drive it (this module)
    models/<name>/model.onnx      the graph, dynamic batch axis
    models/<name>/<graph>.onnx    more graphs of the same model, listed in ``graphs`` (a flow's
                                  likelihood, a latent diffusion model's decoder)
    models/<name>/weights/        PyTorch checkpoint (safetensors + config) for the torch backend
    models/<name>/engines/        TensorRT engines built from model.onnx, keyed by cache key

``Manifest.load`` validates everything and reports every problem at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve import schedule
from genserve.signature import ModelKind, Signature, TensorSpec

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
WEIGHTS_DIR = "weights"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A model folder is missing files or its manifest is invalid; lists every problem."""

    def __init__(self, folder: Path, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid model folder {folder}: " + "; ".join(problems))


@dataclass(frozen=True)
class DiffusionSpec:
    num_timesteps: int = schedule.NUM_TIMESTEPS
    beta_schedule: str = "linear"
    beta_start: float = schedule.BETA_START
    beta_end: float = schedule.BETA_END
    default_steps: int = schedule.NUM_TIMESTEPS
    default_sampler: str = schedule.Sampler.DDPM.value

    def gaussian_diffusion(self) -> schedule.GaussianDiffusion:
        return schedule.GaussianDiffusion(schedule.linear_betas(self.num_timesteps, self.beta_start, self.beta_end))


@dataclass(frozen=True)
class ExtraGraph:
    """A second graph of a model folder: its file, the checkpoint view it was cut from, its signature."""

    file: str
    view: str
    signature: Signature

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "view": self.view,
            "inputs": [s.to_json() for s in self.signature.inputs],
            "outputs": [s.to_json() for s in self.signature.outputs],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExtraGraph:
        signature = Signature(
            tuple(TensorSpec.from_json(s) for s in d["inputs"]), tuple(TensorSpec.from_json(s) for s in d["outputs"])
        )
        return cls(str(d["file"]), str(d["view"]), signature)


# The names of the extra graphs serving knows what to do with.
LIKELIHOOD_GRAPH = "likelihood"  # image -> bits per dimension (LogLikelihood)
DECODER_GRAPH = "decoder"  # a latent diffusion model's latent -> image, run as each image finishes


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: ModelKind
    version: str
    signature: Signature
    image_shape: tuple[int, int, int]  # (C, H, W) of the produced images
    max_batch_size: int  # most items in one engine call, and most images in one request
    description: str = ""
    dataset: str = ""
    latent_dim: int | None = None  # SAMPLER: size of z
    num_classes: int | None = None  # class-conditional SAMPLER/DIFFUSION: labels are 0 .. num_classes - 1
    input_shape: tuple[int, int, int] | None = None  # TRANSLATOR: (C, H, W) of the images it takes
    input_description: str = ""  # TRANSLATOR: how an input image is made (e.g. the exact edge-map recipe)
    diffusion: DiffusionSpec | None = None  # DIFFUSION: the schedule the step graph was trained with
    # The sampling temperature a request without one gets; None = the model takes no temperature.
    # AUTOREGRESSIVE: the logits are divided by it; a flow SAMPLER: z is multiplied by it.
    default_temperature: float | None = None
    # The classifier-free guidance scale a request without one gets; None = the model takes no
    # guidance. Set exactly when the (step) graph takes a ``guidance`` input: class-conditional
    # diffusion, a guided autoregressive model.
    default_guidance: float | None = None
    style_layers: int | None = None  # style-based SAMPLER: synthesis layers (a mix layer is in [0, this])
    graphs: dict[str, ExtraGraph] = field(default_factory=dict)  # name -> more graphs of the folder
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint, training step, command

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "kind": self.kind.value,
            "version": self.version,
            "description": self.description,
            "dataset": self.dataset,
            "image_shape": list(self.image_shape),
            "max_batch_size": self.max_batch_size,
            "inputs": [s.to_json() for s in self.signature.inputs],
            "outputs": [s.to_json() for s in self.signature.outputs],
        }
        if self.latent_dim is not None:
            d["latent_dim"] = self.latent_dim
        if self.num_classes is not None:
            d["num_classes"] = self.num_classes
        if self.input_shape is not None:
            d["input_shape"] = list(self.input_shape)
            d["input_description"] = self.input_description
        if self.diffusion is not None:
            d["diffusion"] = {k: v for k, v in self.diffusion.__dict__.items() if v is not None}
        if self.default_temperature is not None:
            d["default_temperature"] = self.default_temperature
        if self.default_guidance is not None:
            d["default_guidance"] = self.default_guidance
        if self.style_layers is not None:
            d["style_layers"] = self.style_layers
        if self.graphs:
            d["graphs"] = {name: g.to_json() for name, g in self.graphs.items()}
        d.update(metrics=self.metrics, files=self.files, source=self.source)
        return d

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path, verify_hashes: bool = True) -> Manifest:
        path = folder / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(folder, [f"{MANIFEST_FILE} not found"])
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(folder, [f"{MANIFEST_FILE} is not JSON: {exc}"]) from exc
        problems: list[str] = []
        for key in ("name", "kind", "version", "image_shape", "max_batch_size", "inputs", "outputs"):
            if key not in d:
                problems.append(f"missing key {key!r}")
        if d.get("format_version") != FORMAT_VERSION:
            problems.append(f"format_version must be {FORMAT_VERSION}, got {d.get('format_version')!r}")
        kinds = [k.value for k in ModelKind]
        if "kind" in d and d["kind"] not in kinds:
            problems.append(f"kind must be one of {kinds}, got {d['kind']!r}")
        if "max_batch_size" in d and not (isinstance(d["max_batch_size"], int) and d["max_batch_size"] >= 1):
            problems.append(f"max_batch_size must be an integer >= 1, got {d['max_batch_size']!r}")
        if d.get("kind") == ModelKind.DIFFUSION.value and "diffusion" not in d:
            problems.append("a diffusion model needs a 'diffusion' section")
        if d.get("kind") == ModelKind.SAMPLER.value and "latent_dim" not in d:
            problems.append("a sampler model needs 'latent_dim'")
        if d.get("kind") == ModelKind.TRANSLATOR.value and "input_shape" not in d:
            problems.append("a translator model needs 'input_shape'")
        if d.get("kind") == ModelKind.AUTOREGRESSIVE.value and "default_temperature" not in d:
            problems.append("an autoregressive model needs 'default_temperature'")
        diffusion = d.get("diffusion", {})
        if not isinstance(diffusion, dict):
            problems.append(f"'diffusion' must be an object, got {diffusion!r}")
            diffusion = {}
        diffusion = dict(diffusion)
        # Folders exported before the scale moved to the top level keep it in the diffusion section.
        default_guidance = d.get("default_guidance", diffusion.pop("default_guidance", None))
        takes_guidance = any(isinstance(s, dict) and s.get("name") == "guidance" for s in d.get("inputs", []))
        if takes_guidance != (default_guidance is not None):
            problems.append(
                "'default_guidance' is set exactly when the graph takes a 'guidance' input"
                f" (it takes {'one' if takes_guidance else 'none'})"
            )
        if not (folder / ONNX_FILE).is_file():
            problems.append(f"{ONNX_FILE} not found")
        for name, graph in d.get("graphs", {}).items():
            if not isinstance(graph, dict) or not (folder / str(graph.get("file", ""))).is_file():
                problems.append(f"graph {name!r}: its file is not in the folder")
        if verify_hashes:
            for rel, digest in d.get("files", {}).items():
                f = folder / rel
                if not f.is_file():
                    problems.append(f"listed file {rel} not found")
                elif sha256(f) != digest:
                    problems.append(f"sha256 of {rel} does not match the manifest")
        if problems:
            raise ManifestError(folder, problems)
        try:
            return cls(
                name=d["name"],
                kind=ModelKind(d["kind"]),
                version=str(d["version"]),
                signature=Signature(
                    tuple(TensorSpec.from_json(s) for s in d["inputs"]),
                    tuple(TensorSpec.from_json(s) for s in d["outputs"]),
                ),
                image_shape=tuple(int(x) for x in d["image_shape"]),
                max_batch_size=int(d["max_batch_size"]),
                description=d.get("description", ""),
                dataset=d.get("dataset", ""),
                latent_dim=d.get("latent_dim"),
                num_classes=d.get("num_classes"),
                input_shape=tuple(int(x) for x in d["input_shape"]) if "input_shape" in d else None,
                input_description=d.get("input_description", ""),
                diffusion=DiffusionSpec(**diffusion) if "diffusion" in d else None,
                default_temperature=d.get("default_temperature"),
                default_guidance=default_guidance,
                style_layers=d.get("style_layers"),
                graphs={name: ExtraGraph.from_json(g) for name, g in d.get("graphs", {}).items()},
                metrics=d.get("metrics", {}),
                files=d.get("files", {}),
                source=d.get("source", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(folder, [f"malformed entry: {exc}"]) from exc


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def discover(models_dir: Path) -> list[Path]:
    """Model folders under ``models_dir``: every direct subfolder holding a manifest, sorted."""
    return sorted(p.parent for p in models_dir.glob(f"*/{MANIFEST_FILE}"))
