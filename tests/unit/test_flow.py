"""The normalizing flow: exact invertibility both ways, the log-determinant and the bits per
dimension it serves, and ONNX export of both served graphs."""

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from genserve.export.onnx_export import PARITY_ATOL, check_parity, export_onnx
from genserve.images import to_uint8
from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.flow import (
    Flow,
    FlowConfig,
    FlowLikelihood,
    FlowSampler,
    GaussianMixturePrior,
    component_of,
    levels_to_logit,
    squeeze,
    unsqueeze,
)
from genserve.nets.graphs import graph_of, servable_module
from genserve.training.data import mnist_splits
from genserve.training.flow import (
    FlowTrainConfig,
    fit_top_mixture,
    held_out_bits_per_dim,
    learning_rate,
    train_flow,
)

ROUND_TRIP_ATOL = 1e-4


def random_flow(config: FlowConfig, seed: int = 0) -> Flow:
    """A flow with every coupling away from its identity start and actnorm initialised on data,
    in eval mode: what a trained checkpoint looks like to these tests."""
    torch.manual_seed(seed)
    net = Flow(config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        levels = torch.randint(0, 256, (16, config.image_channels, config.image_size, config.image_size)).float()
        net.train().bits_per_dim(levels, torch.rand(levels.shape))  # actnorm's data-dependent init
    return net.eval()


@pytest.fixture(scope="module")
def mnist_flow() -> Flow:
    return random_flow(FlowConfig(hidden=16, steps_per_level=3))


@pytest.fixture(scope="module")
def tiny_flow() -> Flow:
    return random_flow(FlowConfig(image_size=8, hidden=8, steps_per_level=2))


@pytest.fixture(scope="module")
def tiny_flow_per_position() -> Flow:
    """Unequal levels (1 step, then 3) and a top prior with a mean and scale per latent position."""
    return random_flow(FlowConfig(image_size=8, hidden=8, steps_per_level=(1, 3), top_prior="position"))


TINY_FLOWS = ["tiny_flow", "tiny_flow_per_position"]


def test_squeeze_and_unsqueeze_are_inverse_permutations():
    x = torch.randn(3, 2, 8, 8)
    assert squeeze(x).shape == (3, 8, 4, 4)
    assert torch.equal(unsqueeze(squeeze(x)), x)
    assert torch.equal(squeeze(x).sort(dim=1).values.flatten().sort().values, x.flatten().sort().values)


@torch.no_grad()
def test_inverse_of_forward_reconstructs_the_input(mnist_flow):
    levels = torch.randint(0, 256, (8, 1, 28, 28)).float()
    s, _ = levels_to_logit(levels, torch.rand(levels.shape), mnist_flow.config.logit_alpha)
    z, _ = mnist_flow(s)
    assert z.shape == (8, 784)
    assert (mnist_flow.inverse(z) - s).abs().max().item() <= ROUND_TRIP_ATOL


@torch.no_grad()
def test_forward_of_inverse_reconstructs_the_latent(mnist_flow):
    z = torch.randn(8, 784)
    assert (mnist_flow(mnist_flow.inverse(z))[0] - z).abs().max().item() <= ROUND_TRIP_ATOL


@torch.no_grad()
def test_the_served_sampler_inverts_an_image_back_to_its_levels(mnist_flow):
    """image -> z at the bin centres -> FlowSampler -> the server's uint8 conversion: the same digit."""
    levels = torch.randint(0, 256, (4, 1, 28, 28)).float()
    s, _ = levels_to_logit(levels, 0.5, mnist_flow.config.logit_alpha)
    image = FlowSampler(mnist_flow)(mnist_flow(s)[0])
    assert image.abs().max() <= 1.0
    np.testing.assert_array_equal(to_uint8(image.numpy())[..., 0], levels[:, 0].numpy().astype(np.uint8))


@pytest.mark.parametrize("flow", TINY_FLOWS)
def test_the_logdet_is_the_log_determinant_of_the_jacobian(flow, request):
    net = request.getfixturevalue(flow).double()
    try:
        s = torch.randn(1, 1, 8, 8, dtype=torch.float64)
        jac = jacobian(lambda t: net(t.view(1, 1, 8, 8))[0].flatten(), s.flatten())  # (64, 64)
        assert net(s)[1].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-8)
    finally:
        net.float()


@torch.no_grad()
def test_unequal_levels_and_a_per_position_prior_round_trip(tiny_flow_per_position):
    net = tiny_flow_per_position
    assert [len(steps) for steps in net.levels] == [1, 3]
    assert net.top.loc.shape == (1, 8, 2, 2)  # 8x8 -> 4x4 (2 of 4 channels kept) -> 2x2, 8 channels
    z = torch.randn(6, 64)
    assert (net(net.inverse(z))[0] - z).abs().max().item() <= ROUND_TRIP_ATOL


@torch.no_grad()
def test_a_per_position_top_prior_starts_each_position_standardised():
    net = Flow(FlowConfig(image_size=8, hidden=4, steps_per_level=1, top_prior="position")).train()
    s = torch.randn(256, 1, 8, 8) * torch.linspace(0.5, 3.0, 64).view(1, 1, 8, 8) + 2.0
    net(s)  # data-dependent init
    z, _ = net.eval()(s)
    top = z[:, -net.top.loc.numel() :]  # the top prior's part of z, one column per position
    torch.testing.assert_close(top.mean(0), torch.zeros(top.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(top.std(0), torch.ones(top.shape[1]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "config, message",
    [
        (FlowConfig(steps_per_level=(8, 8, 8)), "one count per level"),
        (FlowConfig(top_prior="pixel"), "top_prior"),
    ],
)
def test_an_inconsistent_flow_config_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        Flow(config)


def test_per_level_steps_survive_a_checkpoint(tiny_flow_per_position, tmp_path):
    save_checkpoint(tmp_path, "flow", tiny_flow_per_position, tiny_flow_per_position.config)
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config.steps_per_level == (1, 3) and loaded.config.top_prior == "position"
    z = torch.randn(3, 64)
    torch.testing.assert_close(loaded.inverse(z), tiny_flow_per_position.inverse(z))


def test_the_preprocessing_logdet_is_the_derivative_of_the_logit():
    levels = torch.tensor([0.0, 17.0, 128.0, 255.0], dtype=torch.float64).requires_grad_(True)
    s, logdet = levels_to_logit(levels.view(1, 4), 0.5, alpha=0.05)
    (grad,) = torch.autograd.grad(s.sum(), levels)
    assert logdet.item() == pytest.approx(grad.log().sum().item(), abs=1e-10)


@torch.no_grad()
def test_likelihood_graph_is_the_centre_point_bits_per_dim_of_the_discrete_image(mnist_flow):
    levels = torch.randint(0, 256, (5, 1, 28, 28)).float()
    served = FlowLikelihood(mnist_flow)(levels / 127.5 - 1.0)
    assert served.shape == (5,)
    s, logdet_pre = levels_to_logit(levels, 0.5, mnist_flow.config.logit_alpha)
    z, logdet = mnist_flow(s)
    log_p = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1) + logdet + logdet_pre
    torch.testing.assert_close(served, -log_p / (784 * math.log(2.0)))


@torch.no_grad()
def test_a_flow_that_is_the_identity_gives_the_bits_of_a_gaussian_in_logit_space():
    """With every layer at its start (zero couplings, no actnorm init) only the 1x1 rotations remain:
    bits/dim is then the standard normal's density of s plus the preprocessing term alone."""
    net = Flow(FlowConfig(image_size=8, hidden=4, steps_per_level=1)).eval()
    levels = torch.full((1, 1, 8, 8), 100.0)
    s, logdet_pre = levels_to_logit(levels, 0.5, 0.05)
    expected = (0.5 * (s.pow(2) + math.log(2 * math.pi)).sum() - logdet_pre.sum()) / (64 * math.log(2.0))
    assert net.bits_per_dim(levels, 0.5).item() == pytest.approx(expected.item(), rel=1e-5)


def test_held_out_estimate_averages_the_dequantization_draws(tiny_flow):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    one = held_out_bits_per_dim(tiny_flow, images, draws=1, seed=3)
    assert held_out_bits_per_dim(tiny_flow, images, draws=1, seed=3) == one  # deterministic given the seed
    assert held_out_bits_per_dim(tiny_flow, images, draws=4, seed=3) == pytest.approx(one, abs=0.05)


def test_learning_rate_warms_up_then_decays_to_its_floor():
    config = FlowTrainConfig(steps=1000, lr=1e-3, warmup_steps=100, min_lr_fraction=0.1)
    assert learning_rate(config, 0) == pytest.approx(1e-5)
    assert learning_rate(config, 99) == pytest.approx(1e-3)
    assert learning_rate(config, 999) == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.parametrize("flow", TINY_FLOWS)
@pytest.mark.parametrize("view", ["default", "likelihood"])
def test_both_served_graphs_export_to_onnx_with_parity(flow, view, tmp_path, request):
    cfg = {"image_channels": 1, "image_size": 8}
    module, _ = servable_module(request.getfixturevalue(flow), "flow", view)
    signature = graph_of("flow", view).signature(cfg)
    errors = check_parity(module, export_onnx(module, signature, tmp_path / f"{view}.onnx"), signature)
    assert max(errors.values()) <= PARITY_ATOL


def test_a_short_run_with_shifted_digits_writes_a_servable_checkpoint(tmp_path):
    """Two steps of the real loop on the MNIST split, with the translation augmentation, unequal
    levels and a per-position prior: the checkpoint records its held-out bits/dim and reloads."""
    config = FlowTrainConfig(
        net=FlowConfig(steps_per_level=(1, 2), hidden=4, top_prior="position"),
        steps=2,
        shift_pixels=2,
        init_batch=32,
        eval_draws=1,
        checkpoint_every=2,
    )
    train_flow(tmp_path, config)
    net, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 2 and meta["train"]["shift_pixels"] == 2
    assert 0.0 < meta["held_out_bits_per_dim"] < 16.0
    assert net.config.steps_per_level == (1, 2)


def test_the_last_checkpoint_fits_the_mixture_prior_to_the_shifted_digits(tmp_path):
    """The recipe's top prior: fitted to the EMA flow at the last checkpoint; the trained net has
    the standard normal, so the mixture does not change what it learns."""
    config = FlowTrainConfig(
        net=FlowConfig(steps_per_level=1, hidden=4, top_prior="position", top_mixture=10),
        steps=2,
        init_batch=32,
        eval_draws=1,
        checkpoint_every=1,
    )
    train_flow(tmp_path / "run", config)
    net, meta = load_checkpoint(tmp_path / "run")
    assert meta["step"] == 2 and net.latent_dim == 784 + 2
    assert net.prior.mean.abs().amax(1).min() > 0  # every class has its mean
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)
    assert not any(key.startswith("prior.") for key in state["net"])  # trained with the standard normal
    # The fit is the one fit_top_mixture makes: the same seeded draws, so the same prior.
    refit = Flow(net.config)
    refit.load_state_dict(net.state_dict())
    refit.prior.fit(torch.randn(20, refit.top_dims), torch.arange(20) % 10, 0.5)  # something else
    train, _ = mnist_splits()
    fit_top_mixture(refit, train.images, train.labels, config.shift_pixels, config.mixture_shrink)
    torch.testing.assert_close(refit.prior.mean, net.prior.mean)
    torch.testing.assert_close(refit.prior.scale_tril, net.prior.scale_tril)


def test_the_component_is_uniform_and_does_not_depend_on_the_temperature():
    pair = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(0))
    component = component_of(pair, 10)
    share = torch.bincount(component, minlength=10).float() / len(component)
    assert (share - 0.1).abs().max().item() < 0.005  # 5 standard deviations of a share of 100,000
    for t in (0.25, 0.5, 2.0):  # exact scalings: exactly the same components
        assert torch.equal(component_of(pair * t, 10), component)
    assert (component_of(pair * 0.6, 10) == component).float().mean().item() > 0.9999  # rounding at the edges
    edges = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    assert component_of(edges, 10).tolist() == [9, 0, 5]


def test_the_mixture_prior_is_the_maximum_likelihood_mixture_of_the_classes():
    torch.manual_seed(0)
    k, d = 3, 6
    labels = torch.arange(3000) % k
    h = 3 * torch.randn(k, d)[labels] + torch.randn(3000, d) @ torch.randn(d, d).T
    prior = GaussianMixturePrior(k, d)
    x = h[:50]
    torch.testing.assert_close(prior.log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1))  # unfitted
    prior.fit(h, labels, shrink=0.0)
    torch.testing.assert_close(prior.mean, torch.stack([h[labels == c].mean(0) for c in range(k)]))
    torch.testing.assert_close(prior.scale_tril @ prior.scale_tril.T, torch.cov((h - prior.mean[labels]).T))
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(k)),
        torch.distributions.MultivariateNormal(prior.mean, scale_tril=prior.scale_tril.expand(k, d, d)),
    )
    torch.testing.assert_close(prior.log_prob(x), mixture.log_prob(x), rtol=1e-5, atol=1e-4)
    prior.freeze_inverse()  # the served copy's constant inverse: the same density
    torch.testing.assert_close(prior.log_prob(x), mixture.log_prob(x), rtol=1e-5, atol=1e-4)
    eps, component = torch.randn(4, d), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(prior.sample(eps, component), prior.mean[component] + eps @ prior.scale_tril.T)
    prior.fit(h, labels, shrink=1.0)  # all the way: the mean variance on the diagonal
    cov = torch.cov((h - prior.mean[labels]).T)
    torch.testing.assert_close(prior.scale_tril @ prior.scale_tril.T, cov.diagonal().mean() * torch.eye(d))


@pytest.fixture(scope="module")
def mixture_flow() -> Flow:
    """An 8x8 flow with a fitted mixture top prior (8 components, class means apart)."""
    net = random_flow(FlowConfig(image_size=8, hidden=8, steps_per_level=2, top_mixture=8))
    labels = torch.arange(400) % 8
    net.prior.fit(torch.randn(400, net.top_dims) + 2 * torch.randn(8, net.top_dims)[labels], labels, 0.1)
    return net


@torch.no_grad()
def test_the_mixture_sampler_inverts_an_image_given_its_component_and_scaled_offset(mixture_flow):
    """image -> z; with z's top written as mean_k + L eps and a pair that reads as component k, the
    served sampler gives the image back, for every k."""
    net = mixture_flow
    levels = torch.randint(0, 256, (8, 1, 8, 8)).float()
    s, _ = levels_to_logit(levels, 0.5, net.config.logit_alpha)
    z = net(s)[0]  # (8, 64)
    component = torch.arange(8)
    eps = torch.linalg.solve_triangular(
        net.prior.scale_tril, (z[:, -net.top_dims :] - net.prior.mean[component]).T, upper=False
    ).T
    ratio = torch.tan(math.pi * ((component + 0.5) / 8 - 0.5))  # a / b whose Cauchy CDF is mid-bin k
    pair = torch.stack([ratio, torch.ones(8)], dim=1)
    latent = torch.cat([z[:, : -net.top_dims], eps, pair], dim=1)  # (8, 64 + 2)
    assert latent.shape[1] == net.latent_dim
    image = FlowSampler(net)(latent)
    np.testing.assert_array_equal(to_uint8(image.numpy())[..., 0], levels[:, 0].numpy().astype(np.uint8))
    other = FlowSampler(net)(torch.cat([latent[:, :-2], pair.roll(1, 0)], dim=1))  # other components
    assert (to_uint8(other.numpy()) != to_uint8(image.numpy())).any()


@torch.no_grad()
def test_an_unfitted_mixture_is_the_standard_normal(tiny_flow):
    net = Flow(FlowConfig(image_size=8, hidden=8, steps_per_level=2, top_mixture=10)).eval()
    net.load_state_dict(tiny_flow.state_dict(), strict=False)
    levels = torch.randint(0, 256, (4, 1, 8, 8)).float()
    torch.testing.assert_close(net.bits_per_dim(levels, 0.5), tiny_flow.bits_per_dim(levels, 0.5))


@pytest.mark.parametrize("view", ["default", "likelihood"])
def test_a_mixture_flows_graphs_export_to_onnx_with_parity(mixture_flow, view, tmp_path):
    cfg = {"image_channels": 1, "image_size": 8, "top_mixture": 8}
    module, _ = servable_module(mixture_flow, "flow", view)
    signature = graph_of("flow", view).signature(cfg)
    errors = check_parity(module, export_onnx(module, signature, tmp_path / f"{view}.onnx"), signature)
    assert max(errors.values()) <= PARITY_ATOL
