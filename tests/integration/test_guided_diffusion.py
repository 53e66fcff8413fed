"""Class-conditional diffusion with classifier-free guidance (``ddpm-cond-tiny``, a random-init
conditional UNet exported through the real path): the guided step graph, its training, and its
serving through the step scheduler, genserve's own API, KServe v2 and the CLI."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from genserve import manifest as mf
from genserve import schedule
from genserve.client import GenserveClient
from genserve.images import to_uint8
from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.step import DiffusionStep, GuidedDiffusionStep, sample, step_module, update
from genserve.nets.unet import UNet, UNetConfig
from genserve.serving.runner import ModelRunner
from genserve.signature import ModelKind
from tests.fixtures import DDPM_COND, NUM_CLASSES

DDPM, GAN = "ddpm-tiny", "dcgan-tiny"
STEPS = 4


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.fixture(scope="module")
def guided(tiny_models: Path) -> GuidedDiffusionStep:
    net, _ = load_checkpoint(tiny_models / DDPM_COND / mf.WEIGHTS_DIR)
    return GuidedDiffusionStep(net)


def step_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x, noise = torch.randn(batch, 1, 28, 28, generator=g), torch.randn(batch, 1, 28, 28, generator=g)
    t = torch.randint(0, schedule.NUM_TIMESTEPS, (batch,), generator=g)
    _, coefs = schedule.step_coefficients(schedule.default_diffusion(), 50, schedule.Sampler.DDIM, eta=0.5)
    coef = torch.from_numpy(coefs[torch.randint(0, 50, (batch,), generator=g).numpy()].astype(np.float32))
    return x, t, coef, noise


# --- the guided step ---------------------------------------------------------------------------


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional_one(guided):
    x, t, coef, noise = step_inputs(3)
    label = torch.tensor([2, 5, 9])
    null = torch.full_like(label, guided.unet.null_label)
    with torch.no_grad():
        conditional = update(guided.unet(x, t, label), x, coef, noise)
        unconditional = update(guided.unet(x, t, null), x, coef, noise)
        torch.testing.assert_close(guided(x, t, coef, noise, label, torch.ones(3)), conditional)
        torch.testing.assert_close(guided(x, t, coef, noise, label, torch.zeros(3)), unconditional)
        # w = 3: eps_u + 3 (eps_c - eps_u), the update being affine in eps
        torch.testing.assert_close(
            guided(x, t, coef, noise, label, torch.full((3,), 3.0)),
            update(guided.unet(x, t, null) + 3 * (guided.unet(x, t, label) - guided.unet(x, t, null)), x, coef, noise),
        )


def test_each_slot_has_its_own_label_and_guidance(guided):
    x, t, coef, noise = step_inputs(4, seed=1)
    label, w = torch.tensor([0, 3, 3, 7]), torch.tensor([1.0, 0.0, 4.5, 2.0])
    with torch.no_grad():
        batched = guided(x, t, coef, noise, label, w)
        alone = torch.cat(
            [
                guided(x[i : i + 1], t[i : i + 1], coef[i : i + 1], noise[i : i + 1], label[i : i + 1], w[i : i + 1])
                for i in range(4)
            ]
        )
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_an_unconditional_unet_is_served_as_the_plain_step_and_refuses_labels():
    unet = UNet(UNetConfig(base_channels=8, groups=4))
    assert isinstance(step_module(unet), DiffusionStep)
    with pytest.raises(ValueError, match="not class-conditional"):
        unet(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="needs a label"):
        UNet(UNetConfig(base_channels=8, groups=4, num_classes=10))(
            torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.int64)
        )


def test_the_guided_graph_takes_a_label_and_a_guidance_per_slot(tiny_models: Path):
    manifest = mf.Manifest.load(tiny_models / DDPM_COND)
    assert manifest.kind is ModelKind.DIFFUSION and manifest.num_classes == NUM_CLASSES
    assert [(s.name, s.dtype, s.shape) for s in manifest.signature.inputs[4:]] == [
        ("label", "int64", (-1,)),
        ("guidance", "float32", (-1,)),
    ]
    assert manifest.default_guidance == 1.0  # exported without a Servable: plain conditional
    assert mf.Manifest.load(tiny_models / DDPM).default_guidance is None


# --- training ---------------------------------------------------------------------------------


def test_a_conditional_unet_fine_tuned_from_an_unconditional_one_starts_as_it_without_a_class(tmp_path: Path):
    from genserve.training.ddpm import _init_from

    torch.manual_seed(0)
    source = UNet(UNetConfig(base_channels=8, groups=4))
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0.0, 0.1)
    save_checkpoint(tmp_path / "uncond", "unet", source.eval(), source.config)
    cond = UNet(UNetConfig(base_channels=8, groups=4, num_classes=10)).eval()
    _init_from(cond, tmp_path / "uncond")
    x, t, _, _ = step_inputs(3)
    with torch.no_grad():
        expected = source(x, t)
        torch.testing.assert_close(cond(x, t, torch.full((3,), cond.null_label)), expected)
        for label in (0, 7):  # the class rows start random: the network sees them from the first step
            assert not torch.allclose(cond(x, t, torch.full((3,), label)), expected)
    with pytest.raises(ValueError, match="does not fit"):
        _init_from(UNet(UNetConfig(base_channels=16, groups=4, num_classes=10)), tmp_path / "uncond")


def test_conditional_training_runs_resumes_and_writes_a_labelled_grid(tmp_path: Path):
    from genserve.training.ddpm import DDPMTrainConfig, train_ddpm

    unet = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, attention=False, num_classes=10)
    config = DDPMTrainConfig(unet=unet, steps=3, batch_size=8, warmup=1, checkpoint_every=1, grid_steps=2)
    train_ddpm(tmp_path, config)
    net, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 3 and meta["config"]["num_classes"] == 10
    assert (tmp_path / "samples" / "step000003.png").is_file()
    config.steps = 4
    train_ddpm(tmp_path, config)  # resumes at 3
    assert load_checkpoint(tmp_path)[1]["step"] == 4


# --- serving ----------------------------------------------------------------------------------


def test_list_models_reports_classes_and_the_default_guidance(client: GenserveClient):
    info = {i.name: i for i in client.list_models()}[DDPM_COND]
    assert (info.kind, info.num_classes, info.default_guidance) == (ModelKind.DIFFUSION, NUM_CLASSES, 1.0)
    assert info.default_steps == schedule.NUM_TIMESTEPS


@pytest.mark.parametrize("label, guidance", [(3, 1.0), (8, 0.0), (0, 4.0)])
def test_served_images_equal_the_pytorch_guided_loop(client: GenserveClient, guided, label, guidance):
    """The served fused loop (ONNX Runtime, step scheduler) against ``nets.step.sample`` in PyTorch
    with the same noise keys: equal up to one grey level (float32 kernels of two runtimes)."""
    served = client.generate(
        DDPM_COND, 3, seed=11, steps=STEPS, sampler="ddim", eta=1.0, label=label, guidance=guidance
    )
    ref = sample(
        guided,
        3,
        seed=11,
        image_shape=(1, 28, 28),
        num_steps=STEPS,
        sampler=schedule.Sampler.DDIM,
        eta=1.0,
        labels=np.full(3, label),
        guidance=guidance,
    )
    diff = np.abs(served[..., 0].astype(int) - to_uint8(ref.numpy())[..., 0].astype(int))
    assert diff.max() <= 1


def test_label_and_guidance_change_the_images_and_the_default_is_the_manifests(client: GenserveClient):
    base = client.generate(DDPM_COND, 2, seed=5, steps=STEPS, label=1, guidance=2.0)
    assert not np.array_equal(base, client.generate(DDPM_COND, 2, seed=5, steps=STEPS, label=6, guidance=2.0))
    assert not np.array_equal(base, client.generate(DDPM_COND, 2, seed=5, steps=STEPS, label=1, guidance=0.5))
    np.testing.assert_array_equal(
        client.generate(DDPM_COND, 2, seed=5, steps=STEPS, label=1),
        client.generate(DDPM_COND, 2, seed=5, steps=STEPS, label=1, guidance=1.0),
    )


def test_an_unset_label_draws_the_class_of_each_image_from_seed_and_index(client: GenserveClient, tiny_models):
    runner = ModelRunner(tiny_models / DDPM_COND)
    labels = runner.labels(np.full(6, 21), np.arange(6), None)
    assert len(set(labels.tolist())) > 1
    unlabelled = client.generate(DDPM_COND, 6, seed=21, steps=STEPS)
    for i in np.flatnonzero(labels == labels[0]):
        labelled = client.generate(DDPM_COND, 6, seed=21, steps=STEPS, label=int(labels[0]))
        np.testing.assert_array_equal(unlabelled[i], labelled[i])


def test_concurrent_requests_with_mixed_labels_and_guidance_keep_their_own_images(server):
    """Step-level batching puts slots of different classes and guidance scales in one engine call;
    each image equals the same request made alone (up to one grey level on 0.1% of pixels, the
    rounding of float32 kernels at another batch size, as for the unconditional model)."""
    requests = [
        dict(seed=s, label=s % 10, guidance=[0.0, 1.0, 2.5, 6.0][s % 4], steps=[3, 5, 8][s % 3]) for s in range(12)
    ]
    with GenserveClient(server.target) as c:
        alone = [c.generate(DDPM_COND, 2, **r) for r in requests]
    with concurrent.futures.ThreadPoolExecutor(12) as pool, GenserveClient(server.target) as c:
        together = list(pool.map(lambda r: c.generate(DDPM_COND, 2, **r), requests))
    for a, b in zip(alone, together, strict=True):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3


@pytest.mark.parametrize(
    "model, options, message",
    [
        (DDPM_COND, dict(guidance=-0.5), "guidance must be in [0, 20]"),
        (DDPM_COND, dict(guidance=20.5), "guidance must be in [0, 20]"),
        (DDPM_COND, dict(guidance=float("nan")), "guidance must be in [0, 20]"),
        (DDPM_COND, dict(label=10), f"label must be in [0, {NUM_CLASSES}) for model {DDPM_COND}, got 10"),
        (DDPM, dict(guidance=2.0), f"guidance applies to guided class-conditional models only; {DDPM} is not one"),
        (GAN, dict(guidance=2.0), f"guidance applies to guided class-conditional models only; {GAN} is not one"),
    ],
)
def test_invalid_guidance_is_invalid_argument_naming_what_is_allowed(client: GenserveClient, model, options, message):
    err = rpc_error(lambda: client.generate(model, 1, **options))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()


def test_kserve_takes_an_optional_guidance_per_row(server, client: GenserveClient):
    def tensor(name, datatype, values, dtype):
        data = np.asarray(values, dtype=dtype).reshape(-1, 1)
        t = triton.InferInput(name, list(data.shape), datatype)
        t.set_data_from_numpy(data)
        return t

    with triton.InferenceServerClient(server.target) as kserve:
        config = kserve.get_model_config(DDPM_COND).config
        assert [(i.name, i.optional) for i in config.input] == [
            ("SEED", False),
            ("STEPS", True),
            ("LABEL", True),
            ("GUIDANCE", True),
        ]
        rows = [(4, 2, 0.0), (4, 2, 3.0), (9, 7, 1.5)]
        inputs = [
            tensor("SEED", "INT64", [r[0] for r in rows], np.int64),
            tensor("STEPS", "INT32", [STEPS] * 3, np.int32),
            tensor("LABEL", "INT32", [r[1] for r in rows], np.int32),
            tensor("GUIDANCE", "FP32", [r[2] for r in rows], np.float32),
        ]
        got = kserve.infer(DDPM_COND, inputs).as_numpy("IMAGE")
        own = [client.generate(DDPM_COND, 1, seed=s, steps=STEPS, label=k, guidance=g)[0] for s, k, g in rows]
        np.testing.assert_array_equal(got, np.stack(own))
        with pytest.raises(Exception, match="guidance must be in"):
            kserve.infer(
                DDPM_COND, [tensor("SEED", "INT64", [1], np.int64), tensor("GUIDANCE", "FP32", [-1.0], np.float32)]
            )
        assert "GUIDANCE" not in [i.name for i in kserve.get_model_config(DDPM).config.input]


def test_cli_generate_with_a_label_and_guidance(genserve, server, client: GenserveClient, tmp_path: Path):
    out = tmp_path / "guided.npy"
    args = ("--model", DDPM_COND, "-n", "2", "--seed", "3", "--steps", "3", "--label", "4", "--guidance", "2.5")
    result = genserve("generate", "--server", server.target, *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = client.generate(DDPM_COND, 2, seed=3, steps=3, label=4, guidance=2.5)[..., 0]
    np.testing.assert_array_equal(np.load(out), expected)
    listing = genserve("models", "--server", server.target).stdout
    assert any(line.startswith(DDPM_COND) and "--guidance 0..20, default 1" in line for line in listing.splitlines())
