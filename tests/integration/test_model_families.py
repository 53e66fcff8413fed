"""Issue-5 model families: every served graph exports with ONNX/PyTorch parity and the manifest
fields serving needs; the input recipes behave as their manifests state; and every bundled model
folder loads and carries its evaluation metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genserve import manifest as mf
from genserve.export.onnx_export import (
    DDPM_COND_GUIDANCE,
    PARITY_ATOL,
    PIXELCNN_GUIDANCE,
    SERVED,
    check_parity,
    export_model_folder,
)
from genserve.nets import build, load_checkpoint, save_checkpoint
from genserve.nets.cgan import CGANConfig
from genserve.nets.cyclegan import CycleGANConfig
from genserve.nets.flow import FlowConfig
from genserve.nets.gaussian import GaussianConfig
from genserve.nets.graphs import servable_module
from genserve.nets.latent_diffusion import LatentDiffusionConfig
from genserve.nets.pix2pix import UNetTranslatorConfig
from genserve.nets.pixelcnn import PixelCNNConfig
from genserve.nets.stylegan import StyleGANConfig
from genserve.nets.superres import SRResNetConfig
from genserve.nets.unet import UNetConfig
from genserve.nets.vae import VAEConfig
from genserve.signature import ModelKind
from genserve.training import data
from genserve.training.evaluate import Task, psnr, ssim
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss, gradient_penalty

MODELS = Path(__file__).resolve().parents[2] / "models"

# Checkpoint folder of SERVED -> (family, a config small enough to export in about a second).
TINY = {
    "gaussian-mnist": ("gaussian", GaussianConfig(latent_dim=4)),
    "vae-mnist": ("vae", VAEConfig(latent_dim=4, features=4)),
    "cgan-mnist": ("cgan_generator", CGANConfig(latent_dim=8, embed_dim=4, gen_features=4)),
    "pix2pix-mnist": ("unet_translator", UNetTranslatorConfig(features=4)),
    "srresnet-mnist": ("srresnet", SRResNetConfig(features=4, blocks=1)),
    "srgan-mnist": ("srresnet", SRResNetConfig(features=4, blocks=1)),
    "cyclegan-mnist": ("cyclegan", CycleGANConfig(features=4, blocks=1)),
    "ddpm-cond-mnist": ("unet", UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, num_classes=10)),
    "acgan-mnist": ("cgan_generator", CGANConfig(latent_dim=8, embed_dim=4, gen_features=4)),
    "ldm-mnist": ("latent_diffusion", LatentDiffusionConfig(latent_dim=4, width=8, depth=1, vae_features=4)),
    "pixelcnn-mnist": ("pixelcnn", PixelCNNConfig(channels=4, layers=2, head_channels=8, guided=True)),
    "stylegan-mnist": (
        "stylegan_generator",
        StyleGANConfig(latent_dim=16, w_dim=8, mapping_layers=1, gen_features=4, classes=10),
    ),
    "realnvp-mnist": ("flow", FlowConfig(steps_per_level=1, hidden=4, top_mixture=10)),
}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every issue-5 served model, exported from a random-init tiny network of its family."""
    root = tmp_path_factory.mktemp("families")
    torch.manual_seed(0)
    for checkpoint, (family, config) in TINY.items():
        net = build(family, config)
        if family == "gaussian":
            net.fit(torch.rand(50, 1, 28, 28) * 2 - 1)
        if family == "flow":  # a fitted mixture prior: class means apart, a correlated covariance
            h = torch.randn(200, net.top_dims) @ torch.randn(net.top_dims, net.top_dims) * 0.3
            net.prior.fit(h + torch.randn(10, net.top_dims).repeat(20, 1), torch.arange(200) % 10, 0.1)
        if family == "unet":  # its zero-initialised output layers would hide the label and guidance
            with torch.no_grad():
                for p in net.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.2)
        save_checkpoint(root / "checkpoints" / checkpoint, family, net.eval(), config)
    for name, servable in SERVED.items():
        export_model_folder(root / "checkpoints" / servable.checkpoint, root / "models" / name, name, servable=servable)
    return root / "models"


@pytest.mark.parametrize("name", sorted(SERVED))
def test_every_served_graph_matches_pytorch_at_batch_1_and_7(family_models, name):
    folder = family_models / name
    manifest = mf.Manifest.load(folder)
    net, meta = load_checkpoint(folder / mf.WEIGHTS_DIR)
    module, kind = servable_module(net, meta["family"], SERVED[name].view)
    assert kind is manifest.kind
    errors = check_parity(module, folder / mf.ONNX_FILE, manifest.signature, batches=(1, 7))
    assert max(errors.values()) <= PARITY_ATOL, errors
    for graph in manifest.graphs.values():  # a flow's likelihood, a latent model's decoder
        extra, _ = servable_module(net, meta["family"], graph.view)
        errors = check_parity(extra, folder / graph.file, graph.signature, batches=(1, 7))
        assert max(errors.values()) <= PARITY_ATOL, (graph.file, errors)


@pytest.mark.parametrize("name", sorted(SERVED))
def test_manifest_carries_what_serving_and_evaluation_need(family_models, name):
    manifest = mf.Manifest.load(family_models / name)
    servable = SERVED[name]
    assert Task(manifest.source["task"]).value == servable.task
    assert manifest.image_shape == (1, 28, 28)
    if manifest.kind is ModelKind.TRANSLATOR:
        assert manifest.input_shape == servable.input_shape
        assert manifest.signature.input_names == ["source"]
        assert manifest.input_description == servable.input_description != ""
    elif manifest.kind is ModelKind.DIFFUSION and name == "ddpm-cond-mnist":
        assert manifest.signature.input_names == ["x", "t", "coef", "noise", "label", "guidance"]
        assert (manifest.num_classes, manifest.default_guidance) == (10, DDPM_COND_GUIDANCE)
    elif manifest.kind is ModelKind.DIFFUSION:  # latent diffusion: slots of latents, a decoder graph
        assert manifest.signature.inputs[0].shape == (-1, TINY[servable.checkpoint][1].latent_dim)
        assert list(manifest.graphs) == [mf.DECODER_GRAPH]
    elif manifest.kind is ModelKind.AUTOREGRESSIVE:
        assert manifest.signature.input_names == ["x", "t", "coef", "noise", "label", "guidance"]
        assert (manifest.num_classes, manifest.default_temperature) == (10, 1.0)
        assert manifest.default_guidance == PIXELCNN_GUIDANCE
    elif name == "realnvp-mnist":
        assert manifest.latent_dim == 784 + 2 and list(manifest.graphs) == [mf.LIKELIHOOD_GRAPH]  # + component
        assert manifest.default_temperature == servable.default_temperature == 0.6
    else:
        assert manifest.latent_dim == TINY[servable.checkpoint][1].latent_dim
    if servable.partner:
        assert SERVED[servable.partner].partner == name


def test_conditional_sampler_takes_a_class_label(family_models):
    manifest = mf.Manifest.load(family_models / "cgan-mnist")
    assert manifest.num_classes == 10
    assert [(s.name, s.dtype) for s in manifest.signature.inputs] == [("z", "float32"), ("label", "int64")]


def test_the_label_changes_the_conditional_sample(family_models):
    import onnxruntime as ort

    session = ort.InferenceSession(str(family_models / "cgan-mnist" / mf.ONNX_FILE))
    z = np.zeros((2, 8), dtype=np.float32)
    out = session.run(None, {"z": z, "label": np.array([3, 7], dtype=np.int64)})[0]
    assert not np.allclose(out[0], out[1])


@pytest.mark.parametrize("name", sorted(SERVED))
def test_the_torch_backend_runs_the_same_graph_as_onnx_runtime(family_models, name):
    """The reference backend cuts the served view of the checkpoint as export does (a CycleGAN
    direction, a VAE's decoder), rather than running the whole network."""
    from genserve.serving.config import Backend
    from genserve.serving.engines import create_engine

    folder = family_models / name
    manifest = mf.Manifest.load(folder)
    feeds = manifest.signature.sample_inputs(batch=3, seed=5)
    if manifest.kind is ModelKind.TRANSLATOR:  # images in [-1, 1], as the runner feeds them
        feeds["source"] = np.tanh(feeds["source"])
    ort_out = next(iter(create_engine(folder, manifest, Backend.ONNXRUNTIME).run(feeds).values()))
    torch_out = next(iter(create_engine(folder, manifest, Backend.TORCH).run(feeds).values()))
    np.testing.assert_allclose(ort_out, torch_out, atol=1e-4)


def test_half_stored_weights_are_float16_on_disk_and_run_in_float32_in_both_runtimes(family_models):
    import onnx
    from safetensors.numpy import load_file

    from genserve.serving.config import Backend
    from genserve.serving.engines import create_engine

    folder = family_models / "ddpm-cond-mnist"
    assert SERVED["ddpm-cond-mnist"].half_weights
    graph = onnx.load(str(folder / mf.ONNX_FILE)).graph
    big = [i for i in graph.initializer if np.prod(i.dims) >= 256]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    weights = load_file(str(folder / mf.WEIGHTS_DIR / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {np.dtype(np.float16)}
    manifest = mf.Manifest.load(folder)
    feeds = manifest.signature.sample_inputs(batch=5, seed=3)
    ort_out = create_engine(folder, manifest, Backend.ONNXRUNTIME).run(feeds)["x_prev"]
    torch_out = create_engine(folder, manifest, Backend.TORCH).run(feeds)["x_prev"]
    assert ort_out.dtype == torch_out.dtype == np.float32
    np.testing.assert_allclose(ort_out, torch_out, atol=1e-4)


def test_super_resolution_takes_7x7_inputs(family_models):
    manifest = mf.Manifest.load(family_models / "srgan-mnist-x4")
    assert manifest.input_shape == (1, 7, 7)
    assert manifest.input_description == data.LOW_RES_RECIPE


def test_edge_map_follows_its_recipe():
    digit = np.zeros((1, 28, 28), dtype=np.uint8)
    digit[0, 10:18, 10:18] = 255
    edges = data.edge_map(digit)
    assert edges.dtype == np.uint8 and edges.shape == (1, 28, 28)
    assert edges.max() == 255  # divided by its own maximum
    assert edges[0, 14, 14] == 0 and edges[0, 0, 0] == 0  # flat regions have no gradient
    # Inside a corner gx = gy = 3: magnitude 3 sqrt(2), the maximum; mid-edge only gy = 4.
    assert edges[0, 10, 10] == 255
    assert edges[0, 10, 14] == np.rint(255 * 4 / (3 * np.sqrt(2)))
    assert not data.edge_map(np.zeros((1, 28, 28), dtype=np.uint8)).any()  # a blank image stays blank


def test_low_res_is_rounded_block_average():
    digit = np.zeros((1, 28, 28), dtype=np.uint8)
    digit[0, :4, :4] = [[255, 0, 0, 0]] * 4  # mean 63.75 -> 64
    digit[0, :4, 4:8] = 2  # mean 2
    low = data.low_res(digit)
    assert low.shape == (1, 7, 7) and low.dtype == np.uint8
    assert low[0, 0, 0] == 64 and low[0, 0, 1] == 2 and low[0, 1:].sum() == 0


def test_digits_domain_is_28x28_uint8_and_split_by_class():
    train, held_out = data.digits_splits()
    assert train.images.shape[1:] == (28, 28) and train.images.dtype == np.uint8
    assert len(train.images) + len(held_out.images) == 1797
    assert set(np.unique(held_out.labels)) == set(range(10))
    assert train.images.max() == 255  # 16 * 255 / 16


def test_psnr_and_ssim_of_identical_images_are_maximal():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) > 90
    assert ssim(a, 255 - a) < 0.1


@pytest.mark.parametrize("kind", list(GANLoss))
def test_gan_losses_reward_the_discriminator_for_telling_real_from_fake(kind):
    real, fake = torch.full((8,), 1.0), torch.full((8,), -1.0)
    assert discriminator_loss(kind, real, fake) < discriminator_loss(kind, fake, real)
    assert generator_loss(kind, real) < generator_loss(kind, fake)


def test_gradient_penalty_is_zero_for_a_unit_slope_critic():
    critic = lambda x: x.flatten(1).sum(1) / np.sqrt(x[0].numel())  # noqa: E731 - gradient norm exactly 1
    real, fake = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    assert gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0)).item() == pytest.approx(0.0, abs=1e-9)


BUNDLED = sorted(p.parent.name for p in MODELS.glob(f"*/{mf.MANIFEST_FILE}"))


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_model_folder_loads_and_was_evaluated(name):
    manifest = mf.Manifest.load(MODELS / name)  # verifies every file hash
    assert manifest.source.get("checkpoint_step"), f"{name}: bundled weights must be trained"
    assert manifest.metrics, f"{name}: no metrics; run genserve eval {name} --update-manifest"
    assert manifest.metrics["onnx_sha256"] == manifest.files[mf.ONNX_FILE], "metrics measured on another graph"
    if "fid" in manifest.metrics:
        assert manifest.metrics["fid_floor"] > 0
    size = sum(f.stat().st_size for f in (MODELS / name).rglob("*") if f.is_file())
    if manifest.source.get("task"):  # the issue-5 models are kept small (the older ones predate the limit)
        # ddpm-cond-mnist is ddpm-mnist's 1.06M-parameter UNet fine-tuned, stored in float16; the
        # StyleGAN's graph holds its folded equalized-lr weights and noise constants besides the
        # weights (2.1 MB); a folder with more graphs (a flow's likelihood) holds the weights once
        # more per graph: realnvp-mnist's 948k parameters and its mixture prior's 158k numbers are
        # 2.2 MB in float16, three times over, and the likelihood graph holds the mixture's inverse
        # factor (derived, so float32: 0.6 MB)
        per_copy = 4.5e6 if manifest.graphs else 2.5e6
        limit = 5e6 if manifest.kind.iterative else per_copy * (1 + len(manifest.graphs))
        assert size < limit, f"{name} is {size / 1e6:.2f} MB"


def test_train_export_eval_of_a_family_through_the_cli(genserve, tmp_path):
    """A two-step VAE run with config overrides, both of its served graphs, and a translator eval."""

    def run(*args: str):
        proc = genserve(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    checkpoints, models = tmp_path / "checkpoints", tmp_path / "models"
    run("train", "vae", "--steps", "2", "--set", "net.features=4", "--out", str(checkpoints / "vae-mnist"))
    meta = json.loads((checkpoints / "vae-mnist" / "config.json").read_text())
    assert meta["config"]["features"] == 4 and meta["step"] == 2
    run("export", "vae", "--checkpoints", str(checkpoints), "--models", str(models))
    assert mf.Manifest.load(models / "vae-mnist").kind is ModelKind.SAMPLER
    folder = models / "vae-mnist-reconstruct"
    out = run("eval", str(folder), "-n", "20", "--update-manifest", "--grid", str(tmp_path / "grid.png"))
    metrics = mf.Manifest.load(folder).metrics
    assert json.loads(out.stdout)["psnr"] == metrics["psnr"] and metrics["num_samples"] == 20
    assert (tmp_path / "grid.png").is_file()


def test_unknown_config_override_is_refused(genserve, tmp_path):
    proc = genserve("train", "vae", "--steps", "1", "--set", "no_such_field=1", "--out", str(tmp_path / "ck"))
    assert proc.returncode != 0 and "no field 'no_such_field'" in proc.stderr
