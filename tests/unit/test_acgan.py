"""AC-GAN (Odena et al. 2017): the discriminator judges real/fake and names the class from the
same features without reading the label; both nets are trained on the class cross-entropy (the
discriminator on real and generated images, the generator on the class it was asked for); and
its generator is cgan's, so it exports and serves as a class-conditional sampler."""

import torch
from torch.nn import functional as F

from genserve.nets.acgan import ACGANDiscriminator
from genserve.nets.cgan import CGANConfig, CGANGenerator
from genserve.training.acgan import ACGANTrainConfig, discriminator_objective, generator_objective
from genserve.training.cgan import resolved
from genserve.training.gan_losses import GANLoss

TINY = CGANConfig(latent_dim=8, embed_dim=4, gen_features=4, disc_features=4)


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def test_the_discriminator_scores_and_classifies_from_the_image_alone():
    torch.manual_seed(0)
    disc = ACGANDiscriminator(TINY).eval()
    x, _ = batch(5)
    with torch.no_grad():
        score, class_logits = disc(x)
    assert score.shape == (5,) and class_logits.shape == (5, 10)
    with torch.no_grad():  # one image's outputs do not depend on the others (eval-mode batch norm)
        single_score, single_logits = disc(x[:1])
    torch.testing.assert_close(single_score, score[:1])
    torch.testing.assert_close(single_logits, class_logits[:1])


def test_the_discriminator_class_loss_is_the_cross_entropy_on_real_and_generated_images():
    torch.manual_seed(0)
    disc = ACGANDiscriminator(TINY).eval()
    (real, real_y), (fake, fake_y) = batch(8, 1), batch(8, 2)
    _, class_loss = discriminator_objective(GANLoss.LSGAN, disc, real, real_y, fake, fake_y)
    with torch.no_grad():
        expected = F.cross_entropy(disc(real)[1], real_y) + F.cross_entropy(disc(fake)[1], fake_y)
    torch.testing.assert_close(class_loss.detach(), expected)


def test_the_generator_class_loss_trains_only_the_asked_classes_embeddings():
    torch.manual_seed(0)
    gen, disc = CGANGenerator(TINY), ACGANDiscriminator(TINY)
    z = torch.randn(6, TINY.latent_dim)
    asked = torch.tensor([3, 3, 7, 7, 7, 3])
    _, class_loss = generator_objective(GANLoss.LSGAN, disc, gen(z, asked), asked)
    class_loss.backward()
    touched = gen.embed.weight.grad.abs().sum(1) > 0  # (10,)
    assert touched.tolist() == [k in (3, 7) for k in range(10)]
    assert all(p.grad is not None for p in gen.net.parameters())  # the class loss reaches the whole generator


def test_without_settings_it_trains_with_the_served_cgan_recipe():
    config = resolved(ACGANTrainConfig())
    assert (config.loss, config.optimizer, config.lr, config.betas, config.critic_steps, config.clip) == (
        "lsgan",
        "adam",
        2e-4,
        (0.5, 0.999),
        1,
        None,
    )


def test_its_generator_checkpoint_exports_as_a_class_conditional_sampler(tmp_path):
    from genserve.export.onnx_export import PARITY_ATOL, SERVED, export_model_folder
    from genserve.nets import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", "cgan_generator", CGANGenerator(TINY).eval(), TINY)
    servable = SERVED["acgan-mnist"]
    manifest = export_model_folder(tmp_path / "ckpt", tmp_path / "acgan-mnist", "acgan-mnist", servable=servable)
    assert manifest.source["task"] == "conditional" and "Odena" in manifest.description
    assert [i.name for i in manifest.signature.inputs] == ["z", "label"]
    assert max(manifest.source["parity_max_abs_error"].values()) <= PARITY_ATOL
