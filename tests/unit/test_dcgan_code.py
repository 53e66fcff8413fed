"""The DCGAN's optional InfoGAN categorical code: the generator reads only the argmax of the
first k latent coordinates, the discriminator's code head reads the image, and the exported
graph keeps both the code and the dynamic batch axis."""

import numpy as np
import pytest
import torch

from genserve.nets import save_checkpoint
from genserve.nets.dcgan import DCGANConfig, Discriminator, Generator, code_one_hot

K = 10
CODED = DCGANConfig(gen_features=16, disc_features=16, gen_depth=3, disc_depth=3, categorical_code=K)


def test_code_is_the_one_hot_argmax_of_the_first_k_coordinates():
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    one_hot = code_one_hot(z, K)
    assert one_hot.shape == (64, K) and torch.equal(one_hot.sum(1), torch.ones(64))
    assert torch.equal(one_hot.argmax(1), z[:, :K].argmax(1))


def test_the_generator_reads_the_code_not_the_magnitudes_of_its_coordinates():
    torch.manual_seed(0)
    gen = Generator(CODED).eval()
    z = torch.randn(8, 100, generator=torch.Generator().manual_seed(1))
    rescaled = z.clone()
    rescaled[:, :K] = rescaled[:, :K] * 0.5 + 3.0  # order kept: the same argmax, other values
    recoded = z.clone()
    recoded[:, :K] = torch.roll(z[:, :K], 1, dims=1)  # every argmax moves by one place
    with torch.no_grad():
        base, same, other = gen(z), gen(rescaled), gen(recoded)
    assert torch.equal(base, same)
    # N(0, 0.02) weights make small images, so "changes" is judged against float32 rounding
    assert (base - other).abs().amax(dim=(1, 2, 3)).min() > 1e-6  # each image changes with its code


def test_the_discriminator_code_head_predicts_k_logits_from_the_same_pass():
    torch.manual_seed(0)
    disc = Discriminator(CODED).eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        logits, code_logits = disc.forward_with_code(x)
        assert torch.equal(logits, disc(x))
    assert logits.shape == (5,) and code_logits.shape == (5, K)


def test_without_a_code_the_discriminator_keeps_its_parameter_names():
    names = Discriminator(DCGANConfig(disc_depth=3)).state_dict().keys()
    assert all(n.startswith("net.") for n in names)  # checkpoints written before the code load as before
    with pytest.raises(ValueError, match="no code head"):
        Discriminator(DCGANConfig(disc_depth=3)).forward_with_code(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="disc_depth 3"):
        Discriminator(DCGANConfig(disc_depth=2, categorical_code=K))


def test_a_coded_generator_exports_with_parity_and_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    from genserve.export.onnx_export import export_model_folder

    torch.manual_seed(0)
    gen = Generator(CODED).eval()
    save_checkpoint(tmp_path / "ck", "dcgan_generator", gen, gen.config)
    manifest = export_model_folder(tmp_path / "ck", tmp_path / "model", "dcgan-coded")  # raises if parity fails
    assert "InfoGAN categorical code of 10 values" in manifest.description
    session = ort.InferenceSession(str(tmp_path / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(2).standard_normal((3, 100)).astype(np.float32)
    z2 = z.copy()
    z2[:, :K] = z2[:, :K] * 0.5 + 3.0
    name = session.get_inputs()[0].name
    a, b = session.run(None, {name: z})[0], session.run(None, {name: z2})[0]
    np.testing.assert_array_equal(a, b)
    with torch.no_grad():
        np.testing.assert_allclose(a, gen(torch.from_numpy(z)).numpy(), atol=1e-4)
