"""The DCGAN trainer's learning-rate schedule: constant, then linear to zero (pix2pix's schedule)."""

import pytest

from genserve.training.dcgan import DCGANTrainConfig, learning_rate


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
