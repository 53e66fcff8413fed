"""DiffAugment (training/augment.py): what each augmentation does to an image, that gradients pass
through it, and that policies are checked."""

import pytest
import torch

from genserve.training.augment import BACKGROUND, cutout, diff_augment, parse_policy, translation


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_translation_shifts_each_image_by_its_own_offset_and_fills_with_the_background():
    x = torch.rand(16, 2, 12, 12) * 2 - 1
    out = translation(x, _gen(), ratio=0.25)
    offsets = set()
    for i in range(len(x)):
        # Find the image's shift: the one (dy, dx) within the ratio that reproduces it.
        found = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) if torch.equal(out[i], _shifted(x[i], dy, dx))]
        assert len(found) == 1, f"image {i}: no unique shift reproduces it"
        offsets.add(found[0])
    assert len(offsets) > 1, "every image drew the same offset"


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: out[y, x] = img[y + dy, x + dx], the background outside."""
    c, h, w = img.shape
    out = torch.full_like(img, BACKGROUND)
    for y in range(h):
        for x in range(w):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                out[:, y, x] = img[:, y + dy, x + dx]
    return out


def test_cutout_blanks_one_square_of_the_ratio_where_it_fits():
    x = torch.ones(64, 1, 16, 16)
    out = cutout(x, _gen(), ratio=0.5)
    blank = (out == BACKGROUND).sum(dim=(1, 2, 3))  # pixels blanked per image
    assert blank.max() == 64  # an 8x8 square where it lies wholly inside
    assert (blank > 0).all()  # its centre is always inside the image
    assert ((out == 1) | (out == BACKGROUND)).all()


def test_gradients_reach_the_input_through_every_augmentation():
    x = (torch.rand(4, 1, 28, 28) * 2 - 1).requires_grad_(True)
    diff_augment(x, ("translation", "cutout"), _gen()).sum().backward()
    assert x.grad is not None and x.grad.sum() > 0


def test_an_empty_policy_is_the_identity_and_draws_nothing():
    x, rng = torch.rand(2, 1, 8, 8), _gen(3)
    state = rng.get_state()
    assert diff_augment(x, parse_policy(""), rng) is x
    assert torch.equal(rng.get_state(), state)


def test_policies_are_parsed_and_unknown_ones_named():
    assert parse_policy(" translation, cutout ") == ("translation", "cutout")
    with pytest.raises(ValueError, match="colour"):
        parse_policy("translation,colour")
