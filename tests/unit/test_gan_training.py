"""GAN trainers: the DCGAN learning-rate schedule (constant, then linear to zero, pix2pix's
schedule), and the class-conditional trainer's per-loss recipes and WGAN weight clipping."""

import pytest
import torch

from genserve.nets.cgan import CGANConfig, ProjectionDiscriminator
from genserve.training.cgan import CGANTrainConfig, critic_step, make_optimizer, resolved
from genserve.training.dcgan import DCGANTrainConfig, learning_rate
from genserve.training.gan_losses import GANLoss, discriminator_loss, generator_loss


def test_constant_without_decay():
    config = DCGANTrainConfig(steps=100, lr=2e-4, lr_decay_start=0)
    assert {learning_rate(config, s) for s in (0, 50, 99)} == {2e-4}


def test_linear_to_zero_from_decay_start():
    config = DCGANTrainConfig(steps=100, lr=2e-4, lr_decay_start=60)
    assert learning_rate(config, 59) == 2e-4
    assert learning_rate(config, 60) == 2e-4
    assert learning_rate(config, 80) == pytest.approx(1e-4)
    assert learning_rate(config, 99) == pytest.approx(2e-4 / 40)


@pytest.mark.parametrize("start", [100, 150])
def test_a_decay_start_at_or_past_the_end_keeps_the_rate(start):
    config = DCGANTrainConfig(steps=100, lr=2e-4, lr_decay_start=start)
    assert learning_rate(config, 99) == 2e-4


# The original WGAN (Arjovsky et al. 2017) in the class-conditional trainer: its recipe, and the
# weight clipping that keeps its critic Lipschitz.

TINY_CGAN = CGANConfig(latent_dim=8, embed_dim=4, gen_features=4, disc_features=4)


def test_the_wgan_critic_and_generator_losses_are_the_wasserstein_estimates():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    assert discriminator_loss(GANLoss.WGAN, real, fake).item() == pytest.approx(-1.0 - 2.0)
    assert generator_loss(GANLoss.WGAN, fake).item() == pytest.approx(1.0)


def test_wgan_resolves_to_the_papers_recipe():
    config = resolved(CGANTrainConfig(loss="wgan"))
    assert (config.optimizer, config.lr, config.critic_steps, config.clip) == ("rmsprop", 5e-5, 5, 0.01)
    assert isinstance(make_optimizer(torch.nn.Linear(2, 1).parameters(), config), torch.optim.RMSprop)


def test_the_served_lsgan_recipe_is_unchanged_and_settings_given_win_over_the_recipe():
    config = resolved(CGANTrainConfig())
    assert (config.loss, config.optimizer, config.lr, config.betas, config.critic_steps, config.clip) == (
        "lsgan",
        "adam",
        2e-4,
        (0.5, 0.999),
        1,
        None,
    )
    assert resolved(CGANTrainConfig(loss="wgan", lr=1e-4, critic_steps=2)).lr == 1e-4
    assert resolved(CGANTrainConfig(loss="wgan", critic_steps=2)).critic_steps == 2


def wide_critic() -> ProjectionDiscriminator:
    """A critic whose weights start far outside [-0.01, 0.01], so clipping has work to do."""
    torch.manual_seed(0)
    disc = ProjectionDiscriminator(TINY_CGAN)
    with torch.no_grad():
        for p in disc.parameters():
            p.normal_(0.0, 0.5)
    return disc


@pytest.mark.parametrize("loss", ["wgan", "lsgan"])
def test_after_a_wgan_critic_step_every_critic_weight_lies_within_the_clip(loss):
    config = resolved(CGANTrainConfig(net=TINY_CGAN, loss=loss))
    disc = wide_critic()
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1, torch.rand(8, 1, 28, 28, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (8,), generator=g)
    opt = make_optimizer(disc.parameters(), config)
    critic_step(disc, disc.parameters(), opt, config, real, labels, fake, labels, g)
    largest = max(p.abs().max().item() for p in disc.parameters())
    if loss == "wgan":
        assert largest <= 0.01
    else:  # only the WGAN clips
        assert largest > 0.01
