"""train -> export -> eval through the real ``genserve`` commands, on a two-step DCGAN run."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from genserve import manifest as mf


@pytest.fixture(scope="session")
def run(genserve):
    """``run(*args)``: the command must succeed; its stderr tail explains why it did not."""

    def succeed(*args: str) -> subprocess.CompletedProcess:
        proc = genserve(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return succeed


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    run("train", "dcgan", "--steps", "2", "--out", str(root / "checkpoints" / "dcgan-mnist"))
    return root


def test_train_writes_a_resumable_checkpoint_with_its_config(run, trained):
    ck = trained / "checkpoints" / "dcgan-mnist"
    meta = json.loads((ck / "config.json").read_text())
    assert meta["family"] == "dcgan_generator" and meta["step"] == 2
    assert (ck / "model.safetensors").is_file() and (ck / "train_state.pt").is_file()
    assert (ck / "samples" / "step000002.png").is_file()
    resumed = run("train", "dcgan", "--steps", "3", "--out", str(ck))
    assert "resumed" in resumed.stderr and json.loads((ck / "config.json").read_text())["step"] == 3


def test_dcgan_loss_and_discriminator_are_chosen_with_set_and_recorded(run, trained, tmp_path):
    default = json.loads((trained / "checkpoints" / "dcgan-mnist" / "config.json").read_text())
    assert default["train"]["loss"] == "lsgan" and default["config"]["disc_depth"] == 3  # the bundled recipe
    assert default["config"]["gen_depth"] == 3 and default["train"]["lr_decay_start"] == 18000
    assert default["config"]["categorical_code"] == 10
    ck = tmp_path / "dcgan-ns"
    # the first bundled model's nets, which had no code (its head needs the deeper discriminator)
    depths = ("--set", "net.disc_depth=2", "--set", "net.gen_depth=2", "--set", "net.categorical_code=0")
    run("train", "dcgan", "--steps", "1", "--set", "loss=ns", *depths, "--out", str(ck))
    meta = json.loads((ck / "config.json").read_text())
    assert meta["train"]["loss"] == "ns" and meta["config"]["disc_depth"] == 2 and meta["config"]["gen_depth"] == 2


def test_dcgan_trains_its_infogan_code_and_shows_one_row_per_value(run, trained):
    ck = trained / "checkpoints" / "dcgan-mnist"
    meta = json.loads((ck / "config.json").read_text())
    assert meta["config"]["categorical_code"] == 10 and meta["train"]["code_weight"] == 1.0
    from PIL import Image

    grid = Image.open(ck / "samples" / "step000002.png")
    assert grid.height > grid.width  # 10 rows (one per code value) of 8 samples


def test_export_then_eval_records_metrics_in_the_manifest(run, trained):
    models = trained / "models"
    run("export", "dcgan", "--checkpoints", str(trained / "checkpoints"), "--models", str(models))
    folder = models / "dcgan-mnist"
    assert mf.Manifest.load(folder).metrics == {}
    out = run("eval", str(folder), "-n", "20", "--update-manifest", "--grid", str(trained / "grid.png"))
    report = json.loads(out.stdout)
    assert report["model"] == "dcgan-mnist" and report["num_samples"] == 20
    assert report["fid"] > 0 and report["fid_floor"] > 0 and len(report["class_histogram"]) == 10
    codes = report["codes"]  # the default recipe's InfoGAN code: what each of its 10 values drew
    assert [c["code"] for c in codes] == list(range(10)) and sum(c["samples"] for c in codes) == 20
    assert all(0 <= c["top_class"] <= 9 for c in codes if c["samples"])
    metrics = mf.Manifest.load(folder).metrics
    assert metrics["fid"] == report["fid"]
    assert metrics["onnx_sha256"] == mf.sha256(folder / mf.ONNX_FILE)
    assert (trained / "grid.png").is_file()


def test_eval_spread_reports_the_confident_fraction_at_each_seed(run, trained):
    models = trained / "models"
    run("export", "dcgan", "--checkpoints", str(trained / "checkpoints"), "--models", str(models))
    report = json.loads(run("eval", str(models / "dcgan-mnist"), "-n", "10", "--spread", "3").stdout)
    spread = report["spread"]
    assert spread["seeds"] == [1, 2, 3] and spread["num_samples_per_seed"] == 10
    by_seed = spread["confident_by_seed"]
    assert len(by_seed) == 3 and all(0.0 <= c <= 1.0 for c in by_seed)
    assert spread["mean"] == pytest.approx(sum(by_seed) / 3, abs=1e-4)
    assert spread["min"] == min(by_seed) and spread["max"] == max(by_seed)
    assert spread["seeds_at_or_above_0.9"] == sum(c >= 0.9 for c in by_seed)


def test_eval_spread_is_refused_where_it_would_not_sample_the_folder(genserve, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 28, 28), np.uint8))
    proc = genserve("eval", "dcgan-mnist", "--images", str(tmp_path / "x.npy"), "--spread", "3")
    assert proc.returncode == 2 and "--spread" in proc.stderr


def test_eval_of_an_unknown_model_fails_with_the_reason(genserve, trained):
    proc = genserve("eval", "no-such-model", "--models", str(trained))
    assert proc.returncode != 0
    assert "manifest.json not found" in proc.stderr


def test_in_process_samples_are_generates_images_and_may_outnumber_a_requests_limit(tiny_models: Path):
    """``genserve eval`` samples in engine batches: the same images as one Generate request, and
    more of them than a request may hold (FID is often judged on 1,000 samples)."""
    from genserve.serving.domain import GenerateRequest
    from genserve.serving.runner import MAX_IMAGES_PER_REQUEST, ModelRunner
    from genserve.training.evaluate import samples_from_folder

    for name, steps in (("dcgan-tiny", None), ("ddpm-tiny", 2)):
        runner = ModelRunner(tiny_models / name)
        own = runner.generate(GenerateRequest(name, 70, seed=4, steps=steps))
        np.testing.assert_array_equal(samples_from_folder(tiny_models / name, 70, seed=4, steps=steps), own)
    many = samples_from_folder(tiny_models / "dcgan-tiny", MAX_IMAGES_PER_REQUEST + 44, seed=4)
    assert len(many) == MAX_IMAGES_PER_REQUEST + 44
    np.testing.assert_array_equal(many[:70], samples_from_folder(tiny_models / "dcgan-tiny", 70, seed=4))


def test_resuming_a_run_of_other_nets_names_the_settings_instead_of_failing_on_weights(run, genserve, tmp_path):
    ck = tmp_path / "dcgan-plain"
    run("train", "dcgan", "--steps", "1", "--set", "net.categorical_code=0", "--out", str(ck))
    proc = genserve("train", "dcgan", "--steps", "2", "--out", str(ck))  # the default recipe has a code
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "net.categorical_code: saved 0, asked 10" in proc.stderr and "--set net.categorical_code=0" in proc.stderr
    assert "Traceback" not in proc.stderr
    resumed = run("train", "dcgan", "--steps", "2", "--set", "net.categorical_code=0", "--out", str(ck))
    assert "resumed" in resumed.stderr


def test_resuming_any_family_with_other_nets_fails_with_the_saved_settings(run, genserve, tmp_path):
    ck = tmp_path / "vae"
    run("train", "vae", "--steps", "1", "--set", "net.latent_dim=8", "--out", str(ck))
    proc = genserve("train", "vae", "--steps", "2", "--out", str(ck))  # default latent_dim 16
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds a run of other networks" in proc.stderr and '"latent_dim": 8' in proc.stderr
    assert "Traceback" not in proc.stderr
