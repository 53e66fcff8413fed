"""The StyleGAN generator's served contract: forward(z, psi, mix_z, mix_layer) with per-image
truncation towards w_avg and per-image style mixing, batch-invariant images (constant noise in
eval mode), and the same images from ONNX Runtime."""

import dataclasses

import pytest
import torch

from genserve.export.onnx_export import PARITY_ATOL, check_parity, export_onnx
from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.graphs import graph_of
from genserve.nets.stylegan import StyleGANConfig, StyleGANDiscriminator, StyleGANGenerator, mix_styles

TINY = StyleGANConfig(latent_dim=8, w_dim=8, mapping_layers=2, gen_features=4, disc_features=4)
LAYERS = TINY.style_layers


@pytest.fixture(scope="module")
def net() -> StyleGANGenerator:
    torch.manual_seed(0)
    net = StyleGANGenerator(TINY).eval()
    with torch.no_grad():
        net.w_avg.normal_()  # as if tracked: truncation towards zero would hide a wrong w_avg
        for layer in net.synthesis.layers:
            layer.noise_strength.fill_(0.5)  # trained nets use their noise; the init's zeros would not show it
    return net


def _latents(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, TINY.latent_dim, generator=torch.Generator().manual_seed(seed))


def _run(net, z, psi=1.0, mix_z=None, mix_layer=LAYERS) -> torch.Tensor:
    n = len(z)
    psi = torch.full((n,), psi) if isinstance(psi, float) else psi
    mix_layer = torch.full((n,), mix_layer, dtype=torch.int64) if isinstance(mix_layer, int) else mix_layer
    with torch.no_grad():
        return net(z, psi, z if mix_z is None else mix_z, mix_layer)


def _plain(net, z) -> torch.Tensor:
    """The image of z's own w at every layer, without truncation, built from the parts."""
    with torch.no_grad():
        w = net.mapping(z)
        return net.synthesis(w[:, None].expand(-1, LAYERS, -1))


def test_images_have_the_configured_shape_and_range(net):
    images = _run(net, _latents(3, 0))
    assert images.shape == (3, 1, 28, 28)
    assert images.abs().max() <= 1.0


def test_style_layers_must_match_the_resolution():
    assert StyleGANConfig(image_size=14, style_layers=3).style_layers == 3
    with pytest.raises(ValueError, match="style_layers"):
        StyleGANConfig(style_layers=4)
    with pytest.raises(ValueError, match="image_size"):
        StyleGANConfig(image_size=32)


def test_psi_zero_gives_the_w_avg_image_for_every_latent(net):
    images = _run(net, _latents(4, 1), psi=0.0, mix_z=_latents(4, 2), mix_layer=2)
    with torch.no_grad():
        w_avg_image = net.synthesis(net.w_avg.expand(1, LAYERS, -1))
    torch.testing.assert_close(images, w_avg_image.expand(4, -1, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mix_layer", [LAYERS, LAYERS + 3])
def test_no_truncation_and_no_mixing_is_the_plain_image(net, mix_layer):
    z = _latents(3, 3)
    images = _run(net, z, psi=1.0, mix_z=_latents(3, 4), mix_layer=mix_layer)
    torch.testing.assert_close(images, _plain(net, z), atol=1e-5, rtol=0)


def test_mixing_from_layer_zero_is_the_plain_image_of_mix_z(net):
    mix_z = _latents(3, 6)
    images = _run(net, _latents(3, 5), psi=1.0, mix_z=mix_z, mix_layer=0)
    torch.testing.assert_close(images, _plain(net, mix_z), atol=1e-5, rtol=0)


def test_a_mix_layer_splits_the_styles_per_image():
    w, w2 = torch.zeros(2, 3), torch.ones(2, 3)
    ws = mix_styles(w, w2, torch.tensor([2, 0]), num_layers=4)  # (2, 4, 3)
    assert ws[:, :, 0].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_an_image_does_not_depend_on_its_batch(net):
    z, mix_z = _latents(5, 7), _latents(5, 8)
    psi = torch.tensor([1.0, 0.7, 0.0, 0.5, 1.2])
    mix_layer = torch.tensor([LAYERS, 1, 3, 0, 2])
    batch = _run(net, z, psi, mix_z, mix_layer)
    for i in range(5):
        alone = _run(net, z[i : i + 1], psi[i : i + 1], mix_z[i : i + 1], mix_layer[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=0)


def test_training_mode_draws_noise_and_eval_mode_uses_the_stored_noise():
    torch.manual_seed(1)
    net = StyleGANGenerator(TINY)
    with torch.no_grad():
        for layer in net.synthesis.layers:
            layer.noise_strength.fill_(0.5)
    z = _latents(2, 9)
    assert not torch.equal(_run(net.train(), z), _run(net.train(), z))
    torch.testing.assert_close(_run(net.eval(), z), _run(net.eval(), z), atol=0, rtol=0)


def test_w_avg_moves_towards_the_batch_mean_of_w():
    net = StyleGANGenerator(TINY)
    w = torch.full((4, TINY.w_dim), 2.0)
    net.track_w_avg(w)
    torch.testing.assert_close(net.w_avg, torch.full((TINY.w_dim,), 2.0 * (1 - TINY.w_avg_beta)))


def test_a_checkpoint_restores_the_same_images(net, tmp_path):
    save_checkpoint(tmp_path, "stylegan_generator", net, TINY)
    loaded, meta = load_checkpoint(tmp_path)
    assert meta["config"]["style_layers"] == LAYERS
    z = _latents(2, 10)
    torch.testing.assert_close(_run(loaded, z, 0.7, _latents(2, 11), 2), _run(net, z, 0.7, _latents(2, 11), 2))


def test_the_discriminator_gives_one_logit_per_image():
    assert StyleGANDiscriminator(TINY)(torch.randn(6, 1, 28, 28)).shape == (6,)


def test_onnx_runtime_matches_pytorch(net, tmp_path):
    signature = graph_of("stylegan_generator").signature(dataclasses.asdict(TINY))
    assert signature.input_names == ["z", "psi", "mix_z", "mix_layer"]
    path = export_onnx(net, signature, tmp_path / "model.onnx")
    errors = check_parity(net, path, signature, batches=(1, 7))
    assert max(errors.values()) <= PARITY_ATOL, errors


CLASSED = dataclasses.replace(TINY, classes=4)


def test_a_class_conditional_generator_reads_the_class_not_the_magnitudes_of_its_coordinates():
    torch.manual_seed(0)
    gen = StyleGANGenerator(CLASSED).eval()
    z = _latents(6, 20)
    rescaled = z.clone()
    rescaled[:, :4] = rescaled[:, :4] * 0.5 + 3.0  # order kept: the same argmax, other values
    reclassed = z.clone()
    reclassed[:, :4] = torch.roll(z[:, :4], 1, dims=1)  # every argmax moves by one place
    base, same, other = (_run(gen, x) for x in (z, rescaled, reclassed))
    torch.testing.assert_close(same, base)
    assert (base - other).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # each image changes with its class


def test_a_class_conditional_discriminator_projects_on_the_class():
    torch.manual_seed(0)
    disc = StyleGANDiscriminator(CLASSED)
    with torch.no_grad():
        disc.class_embed.weight.normal_()  # away from its small start
        x = torch.randn(4, 1, 28, 28)
        label = torch.tensor([0, 1, 2, 3])
        logits = disc(x, label)
        h = disc._features(x)
        torch.testing.assert_close(logits, disc.out(h).flatten() + (disc.class_embed.weight[label] * h).sum(1))
        assert (logits - disc(x, label.roll(1))).abs().min() > 1e-4
    with pytest.raises(ValueError, match="needs each image's label"):
        disc(x)


def test_without_classes_the_parameters_are_those_of_unconditional_checkpoints():
    gen_names = set(StyleGANGenerator(TINY).state_dict())
    assert not any("embed" in n for n in gen_names)
    assert StyleGANGenerator(TINY).mapping.layers[0].weight.shape == (TINY.w_dim, TINY.latent_dim)
    assert not any("class_embed" in n for n in StyleGANDiscriminator(TINY).state_dict())


def test_a_class_conditional_generator_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    gen = StyleGANGenerator(CLASSED).eval()
    signature = graph_of("stylegan_generator").signature(dataclasses.asdict(CLASSED))
    path = export_onnx(gen, signature, tmp_path / "model.onnx")
    errors = check_parity(gen, path, signature, batches=(1, 7))
    assert max(errors.values()) <= PARITY_ATOL, errors


def test_class_conditional_training_reaches_both_embeddings(tmp_path):
    from genserve.training.stylegan import StyleGANTrainConfig, train_stylegan

    digits = dataclasses.replace(TINY, latent_dim=12, classes=10)
    with pytest.raises(ValueError, match="10 digits"):
        train_stylegan(tmp_path / "four", StyleGANTrainConfig(net=CLASSED, steps=1))
    config = StyleGANTrainConfig(net=digits, steps=3, batch_size=8, checkpoint_every=3, r1_every=2)
    train_stylegan(tmp_path, config)
    gen, meta = load_checkpoint(tmp_path)
    assert meta["config"]["classes"] == 10 and meta["step"] == 3
    assert gen.mapping.embed is not None
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["disc"]["class_embed.weight"].shape == (10, 4 * digits.disc_features)
    # Adam keeps state only for parameters that got a gradient: every one of both nets did
    assert len(state["opt_d"]["state"]) == len(list(StyleGANDiscriminator(digits).parameters()))
    assert len(state["opt_g"]["state"]) == len(list(StyleGANGenerator(digits).parameters()))
