"""Config mistakes stop a run at start-up, before any work, with a message naming the setting."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import crackdet.cli.validation
import crackdet.data.datamodule
import crackdet.models.torch_model
from crackdet.cli.run import run_main
from crackdet.cli.validation import check_writable_dir, validate_eval_config, validate_train_config
from crackdet.errors import ConfigError
from crackdet.training.train import train
from tests.conftest import PROJECT_ROOT, compose_cfg


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if data scanning or building the network starts."""

    def work_started(*args, **kwargs):
        raise AssertionError("work started before the config was checked")

    monkeypatch.setattr(crackdet.data.datamodule, "scan_folder", work_started)
    monkeypatch.setattr(crackdet.models.torch_model, "build_backbone", work_started)


# (override, the setting the message must name); `{tmp}` is the test's temporary folder.
MISTAKES = [
    ("data.fractions=[0.5,0.3,0.3]", "data.fractions"),
    ("data.fractions=[0.8,0.2]", "data.fractions"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=1.5", "data.batch_size"),
    ("data.image_size=abc", "data.image_size"),
    ("trainer.precision=bogus", "trainer.precision"),
    ("trainer.accelerator=tpuu", "trainer.accelerator"),
    ("data.image_size=16", "data.image_size"),
    ("data.train_fraction=1.5", "data.train_fraction"),
    ("data.std=[0.2,0.0,0.2]", "data.std"),
    ("data.synthetic.n_per_class=0", "data.synthetic.n_per_class"),
    ("model.optimizer.lr=0", "model.optimizer.lr"),
    ("model.optimizer.lr=fast", "model.optimizer.lr"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.num_classes=3", "model.num_classes"),
    ("model.weights={tmp}/missing.pt", "model.weights"),
    ("model.weights=IMAGENET_V9", "model.weights"),
    ("model.backbone=resnet5", "model.backbone"),
    ("model.trainable=some", "model.trainable"),
    ("model.backbone_lr=0", "model.backbone_lr"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.min_epochs=5", "trainer.min_epochs"),
    ("callbacks.operating_point.target_recall=1.5", "callbacks.operating_point.target_recall"),
    ("ckpt_path={tmp}/missing.ckpt", "ckpt_path"),
    ("seed=abc", "seed"),
    ("paths.cache_dir={tmp}/a_file/cache", "paths.cache_dir"),
]


def start_up_error(cfg, caplog) -> str:
    """Run training as the entry point does; the logged error of a run that exits with status 2."""
    caplog.clear()
    with pytest.raises(SystemExit) as stopped:
        run_main(train, cfg)
    assert stopped.value.code == 2
    return caplog.text


@pytest.mark.parametrize("override,setting", MISTAKES)
def test_out_of_range_values_stop_before_any_work(
    tiny_cfg, tmp_path: Path, no_work, caplog, override: str, setting: str
) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    message = start_up_error(tiny_cfg(override.format(tmp=tmp_path)), caplog)
    assert f"{setting}=" in message


def test_missing_data_folder_stops_before_any_work(
    tiny_cfg, tmp_path: Path, no_work, caplog
) -> None:
    cfg = tiny_cfg("data.synthetic=null", f"data.data_dir={tmp_path / 'nowhere'}")
    assert f"data.data_dir={tmp_path / 'nowhere'} does not exist" in start_up_error(cfg, caplog)


def test_valid_config_passes_and_leaves_nothing_behind(tiny_cfg, tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = tiny_cfg(f"model.weights={weights}", "trainer.max_epochs=3", "trainer.min_epochs=2")
    validate_train_config(cfg)
    assert not any((tmp_path / "run").glob(".crackdet-write-check-*"))


def test_full_disk_is_reported_before_training(tiny_cfg, no_work, monkeypatch, caplog) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(crackdet.cli.validation.tempfile, "TemporaryDirectory", full)
    message = start_up_error(tiny_cfg(), caplog)
    assert "hydra.run.dir=" in message and "the disk is full" in message
    assert "paths.log_dir=" in message  # the fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_is_named_with_the_fix(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=r"paths.cache_dir=.*not writable.*Fix: use another"):
        check_writable_dir(locked / "cache", "paths.cache_dir", "use another folder.")


def start_train(*args: str) -> subprocess.Popen:
    """`python train.py <args>` in a subprocess, output captured."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_entry_point_rejects_mistakes_at_start_up(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    cases = {
        # Hydra's struct mode: a misspelt key, an unknown option of a config group.
        "misspelt key": (["model.optimiser.lr=1", run_dir], 1, ["'model.optimiser.lr'"]),
        "unknown option": (
            ["data/augmentation=strongg", run_dir],
            1,
            ["data/augmentation/strongg", "Available options", "strong"],
        ),
        # Checked before Hydra makes the run folder: exit status 2 and the fix, no traceback.
        "unwritable log dir": (
            [f"paths.log_dir={a_file}/outputs"],
            2,
            ["hydra.run.dir=", f"paths.log_dir={a_file}/outputs", "not writable"],
        ),
    }
    # All at once: most of each run is starting Python and importing torch.
    started = {name: start_train(*args) for name, (args, _, _) in cases.items()}
    for name, process in started.items():
        output, _ = process.communicate(timeout=300)
        _, status, expected = cases[name]
        assert process.returncode == status, f"{name}: {output}"
        for text in expected:
            assert text in output, f"{name}: {text!r} not in {output}"
        assert "Traceback" not in output, name


def test_eval_settings_are_checked_at_start_up_all_at_once(tmp_path: Path) -> None:
    ckpt = "ckpt_path=outputs/train/run/checkpoints/best.ckpt"
    validate_eval_config(compose_cfg(tmp_path / "ok", [ckpt], config_name="eval"))
    bad = ["data.batch_size=1.5", "eval.threshold=2", "eval.on_mismatch=maybe", "data.split=train"]
    with pytest.raises(ConfigError) as refused:
        validate_eval_config(compose_cfg(tmp_path / "bad", [ckpt, *bad], config_name="eval"))
    message = str(refused.value)
    assert "4 problems" in message
    for setting in bad:
        assert f"{setting} must be" in message, setting
