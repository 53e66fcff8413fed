"""Distilling autoguidance into one UNet (training/ddpm.py, ``guide_from``): the target two frozen
nets give, the run that fits a student to it, and the configurations it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genserve.nets import load_checkpoint, save_checkpoint
from genserve.nets.unet import UNet, UNetConfig
from genserve.training.ddpm import DDPMTrainConfig, _guided_target, train_ddpm

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, attention=False)


def random_unet(folder: Path, seed: int, config: UNetConfig = TINY) -> UNet:
    torch.manual_seed(seed)
    net = UNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    save_checkpoint(folder, "unet", net.eval(), config)
    return net


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, UNet, UNet]:
    teacher = random_unet(tmp_path / "teacher", 0)
    guide = random_unet(tmp_path / "guide", 1)
    return tmp_path / "teacher", tmp_path / "guide", teacher, guide


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_the_target_is_the_guide_plus_w_times_the_teachers_difference(pair, w):
    teacher_dir, guide_dir, teacher, guide = pair
    target = _guided_target(
        DDPMTrainConfig(unet=TINY, init_from=str(teacher_dir), guide_from=str(guide_dir), guide_scale=w), teacher
    )
    torch.manual_seed(2)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    with torch.no_grad():
        eps_t, eps_g = teacher(x, t), guide(x, t)
    assert not torch.allclose(eps_t, eps_g)
    torch.testing.assert_close(target(x, t), eps_g + w * (eps_t - eps_g))


def test_a_distillation_run_trains_a_copy_of_the_teacher_and_records_its_guide(pair, tmp_path: Path):
    teacher_dir, guide_dir, teacher, _ = pair
    config = DDPMTrainConfig(
        unet=TINY, steps=2, batch_size=8, warmup=1, checkpoint_every=1, grid_steps=2, ema_decay=0.0,
        init_from=str(teacher_dir), guide_from=str(guide_dir), guide_scale=2.0, lr=1e-3,
    )  # fmt: skip
    train_ddpm(tmp_path / "student", config)
    student, meta = load_checkpoint(tmp_path / "student")
    assert meta["step"] == 2 and meta["train"]["guide_from"] == str(guide_dir)
    changed = [not torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True)]
    assert any(changed)


def test_it_needs_a_teacher_and_an_unconditional_unet(pair, tmp_path: Path):
    teacher_dir, guide_dir, teacher, _ = pair
    with pytest.raises(ValueError, match="needs init_from"):
        _guided_target(DDPMTrainConfig(unet=TINY, guide_from=str(guide_dir)), teacher)
    conditional = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, attention=False, num_classes=10)
    config = DDPMTrainConfig(unet=conditional, steps=1, init_from=str(teacher_dir), guide_from=str(guide_dir))
    with pytest.raises(ValueError, match="unconditional"):
        train_ddpm(tmp_path / "student", config)
