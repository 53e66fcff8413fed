"""Latent diffusion: the step graph diffuses latent vectors with the pixel DDPM's update, the decoder
graph is the VAE's decoder on unscaled latents, both export to ONNX with parity, and the reference
sampler uses the server's noise keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genserve import schedule
from genserve.export.onnx_export import PARITY_ATOL, check_parity, export_onnx
from genserve.nets import load_checkpoint
from genserve.nets.graphs import graph_of, servable_module
from genserve.nets.latent_diffusion import (
    LatentDecode,
    LatentDiffusion,
    LatentDiffusionConfig,
    LatentDiffusionStep,
    sample,
)
from genserve.nets.step import update
from genserve.nets.vae import VAE
from genserve.signature import ModelKind
from genserve.training.latent_diffusion import LatentDiffusionTrainConfig, Posterior, latent_statistics

TINY = dict(latent_dim=4, width=16, depth=1, time_dim=8, vae_features=4, scale=0.5, clip_bound=3.0)


def tiny_net() -> tuple[LatentDiffusion, VAE]:
    torch.manual_seed(0)
    config = LatentDiffusionConfig(**TINY)
    net = LatentDiffusion(config)
    vae = VAE(config.vae_config())
    net.load_vae_decoder(vae)
    for p in net.denoiser.parameters():  # the zero-initialised output layer would make ε = 0
        torch.nn.init.normal_(p, std=0.2)
    return net.eval(), vae.eval()


def test_update_on_vectors_equals_update_on_1x1_images():
    g = torch.Generator().manual_seed(1)
    eps, x, noise = (torch.randn(5, 4, generator=g) for _ in range(3))
    coef = torch.rand(5, 6, generator=g)
    as_image = update(eps[..., None, None], x[..., None, None], coef, noise[..., None, None])  # (5, 4, 1, 1)
    assert torch.equal(update(eps, x, coef, noise), as_image[..., 0, 0])


def test_step_maps_latents_to_latents_and_clips_x0_to_the_latent_range():
    net, _ = tiny_net()
    step = LatentDiffusionStep(net)
    x = torch.full((3, 4), 10.0)  # far outside the latents' range
    t = torch.zeros(3, dtype=torch.int64)
    # x̂₀ = x, then x_prev = x̂₀: the output is x̂₀ after the clip.
    coef = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]]).repeat(3, 1)
    assert torch.equal(step(x, t, coef, torch.zeros(3, 4)), torch.full((3, 4), 3.0))  # ± clip_bound, not ±1
    coef[:, 5] = schedule.NO_CLIP
    assert torch.equal(step(x, t, coef, torch.zeros(3, 4)), x)


def test_decode_is_the_vae_decoder_on_unscaled_latents():
    net, vae = tiny_net()
    latent = torch.randn(6, 4)
    image = LatentDecode(net)(latent)
    assert image.shape == (6, 1, 28, 28)
    assert image.abs().max() <= 1.0
    torch.testing.assert_close(image, vae.decode(latent / 0.5))


def test_the_two_graphs_are_registered_with_latent_signatures():
    config = LatentDiffusionConfig(**TINY).__dict__
    step_graph, decode_graph = graph_of("latent_diffusion"), graph_of("latent_diffusion", "decode")
    assert step_graph.kind is ModelKind.DIFFUSION and decode_graph.kind is ModelKind.SAMPLER
    assert [s.shape for s in step_graph.signature(config).inputs] == [(-1, 4), (-1,), (-1, 6), (-1, 4)]
    assert decode_graph.signature(config).outputs[0].shape == (-1, 1, 28, 28)


@pytest.mark.parametrize("view", ["default", "decode"])
def test_both_graphs_export_to_onnx_with_parity(tmp_path, view):
    net, _ = tiny_net()
    module, _ = servable_module(net, "latent_diffusion", view)
    signature = graph_of("latent_diffusion", view).signature(net.config.__dict__)
    path = export_onnx(module, signature, tmp_path / "model.onnx")
    errors = check_parity(module, path, signature, batches=(1, 7))
    assert max(errors.values()) <= PARITY_ATOL


def test_sampler_draws_each_image_from_its_own_noise_keys():
    net, _ = tiny_net()
    step, decode = LatentDiffusionStep(net), LatentDecode(net)
    three = sample(step, decode, 3, seed=5, num_steps=10, sampler=schedule.Sampler.DDIM)
    two = sample(step, decode, 2, seed=5, num_steps=10, sampler=schedule.Sampler.DDIM)
    assert three.shape == (3, 1, 28, 28)
    torch.testing.assert_close(three[:2], two)
    other = sample(step, decode, 2, seed=6, num_steps=10, sampler=schedule.Sampler.DDIM)
    assert not torch.allclose(two, other)


def test_scale_brings_the_diffused_latents_to_unit_variance():
    g = torch.Generator().manual_seed(0)
    mean, std = 3.0 * torch.randn(2000, 4, generator=g), torch.full((2000, 4), 4.0)
    scale, bound = latent_statistics(mean, std, Posterior.MEAN)
    assert (scale * mean).std().item() == pytest.approx(1.0, rel=1e-4)
    assert bound >= (scale * mean).abs().max().item()
    scale, _ = latent_statistics(mean, std, Posterior.SAMPLE)  # Var = 9 + 16
    assert scale == pytest.approx(1 / 5, rel=0.05)


def test_a_short_run_writes_a_checkpoint_that_rebuilds_with_the_vae_decoder(tmp_path):
    from genserve.training.latent_diffusion import DEFAULT_VAE, train_latent_diffusion

    config = LatentDiffusionTrainConfig(
        net=LatentDiffusionConfig(width=16, depth=1, time_dim=8),
        steps=2,
        batch_size=16,
        checkpoint_every=2,
        grid_steps=2,
    )
    train_latent_diffusion(tmp_path, config)
    net, meta = load_checkpoint(tmp_path)
    vae, _ = load_checkpoint(DEFAULT_VAE)
    assert meta["family"] == "latent_diffusion" and meta["step"] == 2
    assert meta["config"]["scale"] == pytest.approx(1.0, rel=0.2)  # the served VAE's means are near unit variance
    for name, value in vae.decoder.state_dict().items():
        assert torch.equal(net.decoder.state_dict()[name], value)
    assert (tmp_path / "samples" / "step000002.png").exists()
    assert np.isfinite(net.config.clip_bound)
