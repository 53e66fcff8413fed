"""The gated PixelCNN: the logits at a pixel see only the pixels before it in row-major order
(no blind spot above-right), the served step graph computes the whole net's logits on its
window of rows and samples by inverse CDF from the slot's own noise, and the reference loop is
batch-invariant and exports to ONNX with parity and a dynamic batch. A guided net samples from
classifier-free-guided log-probabilities with a scale per slot, and starts from an unguided one."""

import numpy as np
import pytest
import torch

from genserve import noise, schedule
from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.pixelcnn import PixelCNN, PixelCNNConfig, PixelCNNStep, sample
from genserve.signature import autoregressive_step_signature
from genserve.training.pixelcnn import PixelCNNTrainConfig, bits_per_dim, init_from, train_pixelcnn

SMALL = PixelCNNConfig(channels=8, layers=4, head_channels=16)
GUIDED = PixelCNNConfig(channels=8, layers=4, head_channels=16, guided=True)
HW = SMALL.image_size**2


def random_net(config: PixelCNNConfig = SMALL, seed: int = 0) -> PixelCNN:
    """Every parameter random (the class embeddings start at zero), so each input and label matters."""
    torch.manual_seed(seed)
    net = PixelCNN(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


def images(n: int, seed: int = 1) -> torch.Tensor:
    """n random images on the 256 levels, (n, 1, 28, 28) in [-1, 1]."""
    levels = torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    return levels.float() / 127.5 - 1.0


@pytest.mark.parametrize("p", [0, 13, 28, 401, HW - 1])
def test_changing_a_pixel_leaves_the_logits_up_to_it_unchanged_exactly(p):
    net = random_net()
    x, label = images(1), torch.tensor([3])
    changed = x.clone()
    changed.view(-1)[p] = -changed.view(-1)[p] + 0.5
    with torch.no_grad():
        before, after = net(x, label).flatten(2), net(changed, label).flatten(2)  # (1, 256, HW)
    assert torch.equal(before[..., : p + 1], after[..., : p + 1])
    if p < HW - 1:
        assert not torch.equal(before[..., p + 1 :], after[..., p + 1 :])


@pytest.mark.parametrize("row, col", [(0, 5), (1, 0), (14, 14), (27, 27)])
def test_the_gradient_of_a_pixels_logits_reaches_only_earlier_pixels_and_has_no_blind_spot(row, col):
    net = random_net()
    x = images(1).requires_grad_(True)
    p = row * 28 + col
    (grad,) = torch.autograd.grad(net(x, torch.tensor([7])).flatten(2)[0, :, p].square().sum(), x)
    seen = grad[0, 0] != 0  # (28, 28)
    assert not seen.flatten()[p:].any()
    # The neighbours before p, including above-right, which a masked PixelCNN's blind spot misses.
    for dr, dc in [(0, -1), (0, -2), (-1, 0), (-1, -1), (-1, 1), (-1, 2), (-2, 3)]:
        r, c = row + dr, col + dc
        if r >= 0 and 0 <= c < 28:
            assert seen[r, c], (r, c)
    # The receptive field reaches rows_up rows above, no further.
    rows = seen.any(1).nonzero().flatten()
    if row > 0:
        assert rows.min() >= row - SMALL.rows_up


def test_the_label_enters_every_pixels_logits():
    net = random_net()
    x = images(1)
    with torch.no_grad():
        a, b = net(x, torch.tensor([2])), net(x, torch.tensor([5]))
    assert (a - b).abs().amax(dim=1).min() > 0  # every pixel, the first included


def test_the_step_graph_computes_the_whole_nets_logits_at_t_on_its_window():
    net = random_net(PixelCNNConfig(channels=8, layers=7, head_channels=16))  # rows_up 18: windows above the image
    step = PixelCNNStep(net)
    t = torch.tensor([0, 5, 27, 28, 200, 500, HW - 1])
    x, label = images(len(t)), torch.arange(len(t))
    with torch.no_grad():
        whole = net(x, label).flatten(2)[torch.arange(len(t)), :, t]  # (B, 256)
        windowed = step.logits(x, t, label)
    torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-4)


def test_a_step_keeps_the_past_sets_pixel_t_to_the_inverse_cdf_level_and_zeroes_the_future():
    net = random_net()
    step = PixelCNNStep(net)
    b = 6
    x, label = images(b), torch.arange(b)
    t = torch.tensor([-3, 0, 100, 400, 783, 10_000])  # out of range: clamped into [0, 783]
    coef = torch.zeros(b, len(schedule.COEF_COLUMNS))
    coef[:, 0] = torch.tensor([1.0, 1.0, 0.5, 2.0, 1.0, 1.0])  # 1 / temperature
    z = torch.randn(b, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = step(x, t, coef, z, label).flatten(1)
        logits = step.logits(x, t, label).double()
    tc = t.clamp(0, HW - 1)
    pos = torch.arange(HW)[None]
    past, future = pos < tc[:, None], pos > tc[:, None]
    assert torch.equal(out[past], x.flatten(1)[past])
    assert torch.equal(out[future], torch.zeros_like(out[future]))
    # The level: how many entries of the tempered softmax's CDF lie below u = Phi(noise at t).
    cdf = torch.softmax(logits * coef[:, :1].double(), dim=1).cumsum(1)
    u = 0.5 * (1 + torch.erf(z.flatten(1)[torch.arange(b), tc].double() / np.sqrt(2)))
    want = (cdf < u[:, None]).sum(1).clamp(max=255)
    assert torch.equal(out[torch.arange(b), tc], want.float() / 127.5 - 1)


def test_sampling_is_batch_invariant_and_uses_the_servers_noise_keys():
    config = PixelCNNConfig(image_size=8, channels=8, layers=3, head_channels=16)
    step = PixelCNNStep(random_net(config))
    both = sample(step, np.array([3, 7]), seed=5)
    alone = sample(step, np.array([3]), seed=5)
    assert torch.equal(both[0], alone[0])
    # Image 1 of the request on its own, step by step: gaussian(seed, 1, k + 1) at pixel k.
    x = torch.from_numpy(noise.gaussian([5], [1], [noise.INITIAL_STEP], (1, 8, 8)))
    coef = torch.zeros(1, len(schedule.COEF_COLUMNS))
    coef[:, 0] = 1.0
    with torch.no_grad():
        for k in range(64):
            z = torch.from_numpy(noise.gaussian([5], [1], [k + 1], (1, 8, 8)))
            x = step(x, torch.tensor([k]), coef, z, torch.tensor([7]))
    assert torch.equal(both[1], x[0])
    levels = (both + 1) * 127.5
    assert torch.allclose(levels, levels.round(), rtol=0, atol=1e-4)  # on the 256 levels v / 127.5 - 1
    assert levels.min() >= 0 and levels.max() <= 255


def test_bits_per_dim_of_a_uniform_softmax_is_eight():
    net = PixelCNN(SMALL).eval()
    with torch.no_grad():
        net.head[-1].weight.zero_()
        net.head[-1].bias.zero_()
    digits = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert bits_per_dim(net, digits, np.arange(5)) == pytest.approx(8.0, abs=1e-5)


def test_the_step_graph_exports_with_parity_and_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    from genserve.export.onnx_export import check_parity, export_onnx

    step = PixelCNNStep(random_net()).eval()
    signature = autoregressive_step_signature((1, 28, 28), SMALL.num_classes)
    path = export_onnx(step, signature, tmp_path / "model.onnx")
    errors = check_parity(step, path, signature, batches=(1, 5))
    assert max(errors.values()) <= 1e-4, errors
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = signature.sample_inputs(batch=3, seed=1)
    feeds["t"] = np.array([-1, 400, 5000], dtype=np.int64)  # clamped in the graph
    (got,) = session.run(signature.output_names, feeds)
    with torch.no_grad():
        want = step(*(torch.from_numpy(feeds[n]) for n in signature.input_names)).numpy()
    assert got.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(got, want, atol=1e-4)


# --- classifier-free guidance ---------------------------------------------------------------------


def test_a_guided_net_has_a_null_label_row_in_every_class_embedding():
    net = random_net(GUIDED)
    assert net.null_label == 10 and PixelCNN(SMALL).null_label is None
    rows = {m.num_embeddings for m in net.modules() if isinstance(m, torch.nn.Embedding)}
    assert rows == {11}
    with pytest.raises(ValueError, match="class-conditional"):
        PixelCNN(PixelCNNConfig(num_classes=None, guided=True))


def test_guidance_one_is_the_conditional_model_zero_the_unconditional_and_each_slot_has_its_own():
    step = PixelCNNStep(random_net(GUIDED))
    x, t, label = images(3), torch.tensor([0, 300, 700]), torch.tensor([2, 5, 9])
    null = torch.full_like(label, 10)
    with torch.no_grad():
        log_c = torch.log_softmax(step.logits(x, t, label), dim=1)
        log_u = torch.log_softmax(step.logits(x, t, null), dim=1)
        torch.testing.assert_close(step.guided_logits(x, t, label, torch.ones(3)), log_c)
        torch.testing.assert_close(step.guided_logits(x, t, label, torch.zeros(3)), log_u)
        w = torch.tensor([0.0, 1.0, 3.0])
        mixed = step.guided_logits(x, t, label, w)
        torch.testing.assert_close(mixed, log_u + w[:, None] * (log_c - log_u))
        for i in range(3):  # a slot's output depends on its own scale only
            alone = step.guided_logits(x[i : i + 1], t[i : i + 1], label[i : i + 1], w[i : i + 1])
            torch.testing.assert_close(alone, mixed[i : i + 1])
    with pytest.raises(ValueError, match="guidance"):
        step(x, t, torch.ones(3, len(schedule.COEF_COLUMNS)), torch.zeros_like(x), label)


def test_guided_sampling_is_batch_invariant_and_the_scale_changes_the_images():
    config = PixelCNNConfig(image_size=8, channels=8, layers=3, head_channels=16, guided=True)
    step = PixelCNNStep(random_net(config))
    both = sample(step, np.array([3, 7]), seed=5, guidance=3.0)
    assert torch.equal(both[0], sample(step, np.array([3]), seed=5, guidance=3.0)[0])
    assert not torch.equal(both, sample(step, np.array([3, 7]), seed=5, guidance=1.0))


def test_the_guided_step_graph_takes_a_guidance_per_slot_and_exports_with_parity(tmp_path):
    from genserve.export.onnx_export import check_parity, export_onnx

    step = PixelCNNStep(random_net(GUIDED)).eval()
    signature = autoregressive_step_signature((1, 28, 28), GUIDED.num_classes, guided=True)
    assert signature.input_names == ["x", "t", "coef", "noise", "label", "guidance"]
    path = export_onnx(step, signature, tmp_path / "model.onnx")
    errors = check_parity(step, path, signature, batches=(1, 5))
    assert max(errors.values()) <= 1e-4, errors


def test_a_guided_net_starts_from_an_unguided_checkpoint_with_the_classes_mean_as_its_null_row(tmp_path):
    source = random_net(SMALL)
    save_checkpoint(tmp_path / "unguided", "pixelcnn", source, SMALL)
    net = PixelCNN(GUIDED)
    init_from(net, tmp_path / "unguided")
    theirs = source.state_dict()
    for name, value in net.state_dict().items():
        if value.shape == theirs[name].shape:
            assert torch.equal(value, theirs[name]), name
        else:  # a class embedding: the classes' rows, then their mean
            assert torch.equal(value[:-1], theirs[name]), name
            torch.testing.assert_close(value[-1], theirs[name].mean(dim=0))
    x, t, label = images(2), torch.tensor([10, 500]), torch.tensor([1, 8])
    with torch.no_grad():  # the conditional model is the source's
        torch.testing.assert_close(PixelCNNStep(net).logits(x, t, label), PixelCNNStep(source).logits(x, t, label))
    with pytest.raises(ValueError, match="does not fit"):
        init_from(PixelCNN(PixelCNNConfig(channels=16, layers=4, head_channels=16)), tmp_path / "unguided")


def test_label_dropout_trains_the_null_label_and_only_it_when_every_label_is_dropped(tmp_path):
    source = random_net(SMALL)
    save_checkpoint(tmp_path / "unguided", "pixelcnn", source, SMALL)
    config = PixelCNNTrainConfig(
        net=GUIDED, steps=2, batch_size=4, init_from=str(tmp_path / "unguided"), label_dropout=1.0, ema_decay=0
    )
    train_pixelcnn(tmp_path / "guided", config)
    trained, meta = load_checkpoint(tmp_path / "guided")
    assert meta["config"]["guided"] and meta["step"] == 2
    before = source.state_dict()
    for name, value in trained.state_dict().items():
        if value.shape != before[name].shape:  # a class embedding: no class row was used, the null row was
            assert torch.equal(value[:-1], before[name]), name
            assert not torch.allclose(value[-1], before[name].mean(dim=0)), name
