"""last.ckpt: written once its interval has passed and always at the fit's end, never lost."""

from __future__ import annotations

import errno
from pathlib import Path

import lightning as L
import pytest
import torch

from crackdet.errors import ConfigError
from crackdet.training.callbacks import LastCheckpoint
from crackdet.training.checkpoint_io import AtomicCheckpointIO
from crackdet.training.train import train


@pytest.fixture
def saves(monkeypatch) -> list[tuple[str, int]]:
    """(file name, epoch) of every checkpoint the trainer writes during the test."""
    written: list[tuple[str, int]] = []
    original = L.Trainer.save_checkpoint

    def recording(trainer: L.Trainer, filepath, *args, **kwargs):
        written.append((Path(filepath).name, trainer.current_epoch))
        return original(trainer, filepath, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", recording)
    return written


def last_saves(saves: list[tuple[str, int]]) -> list[int]:
    return [epoch for name, epoch in saves if name == "last.ckpt"]


def test_short_epochs_write_last_checkpoint_once_at_the_end(tiny_cfg, saves, tmp_path) -> None:
    train(tiny_cfg("trainer.max_epochs=3", "callbacks.last_checkpoint.every_seconds=3600"))
    assert last_saves(saves) == [2]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 12  # the whole fit, resumable


def test_every_seconds_zero_writes_every_epoch(tiny_cfg, saves) -> None:
    train(tiny_cfg("trainer.max_epochs=3", "callbacks.last_checkpoint.every_seconds=0"))
    assert last_saves(saves) == [0, 1, 2]


def test_early_stopping_writes_the_epoch_it_stops_at(tiny_cfg, saves, tmp_path) -> None:
    train(
        tiny_cfg(
            "trainer.max_epochs=6",
            "callbacks.last_checkpoint.every_seconds=3600",
            "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
            "+callbacks.stop.monitor=val/loss",
            "+callbacks.stop.patience=0",
            "+callbacks.stop.min_delta=100",  # no epoch improves by 100: stop after the second
        )
    )
    assert last_saves(saves) == [1]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1


def test_without_an_epoch_limit_the_last_step_is_written_once(tiny_cfg, saves) -> None:
    # 4 steps per epoch: max_steps=10 ends the fit in the third epoch, at step 10.
    train(
        tiny_cfg(
            "trainer.max_epochs=-1",
            "+trainer.max_steps=10",
            "callbacks.last_checkpoint.every_seconds=3600",
        )
    )
    assert last_saves(saves) == [2]


def test_a_negative_interval_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="callbacks.last_checkpoint.every_seconds=-1"):
        LastCheckpoint("checkpoints", every_seconds=-1)


# --- one file for identical checkpoints -----------------------------------------------------


def test_a_fit_whose_last_epoch_is_best_keeps_one_file_under_both_names(tiny_cfg, tmp_path):
    results = train(tiny_cfg("trainer.max_epochs=1"))
    folder = tmp_path / "run" / "checkpoints"
    assert Path(results["best_checkpoint"]) == folder / "best.ckpt"
    assert (folder / "last.ckpt").samefile(folder / "best.ckpt")
    assert not list(folder.glob(".*"))  # no temporary file left
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and "state_dict" in last


def identical_saves(tmp_path: Path):
    io = AtomicCheckpointIO()
    checkpoint = {"state_dict": {"w": torch.arange(6.0)}, "epoch": 3}
    io.save_checkpoint(checkpoint, tmp_path / "best.ckpt")
    return io, checkpoint


def test_another_name_for_the_same_bytes_is_a_link_and_either_can_change_alone(tmp_path):
    io, checkpoint = identical_saves(tmp_path)
    io.save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").samefile(tmp_path / "best.ckpt")
    io.save_checkpoint({**checkpoint, "epoch": 4}, tmp_path / "last.ckpt")  # replaced, not edited
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 3
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 4
    io.remove_checkpoint(tmp_path / "best.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 4


def test_other_bytes_or_a_changed_file_are_written_not_linked(tmp_path):
    io, checkpoint = identical_saves(tmp_path)
    io.save_checkpoint({**checkpoint, "epoch": 4}, tmp_path / "other.ckpt")
    assert not (tmp_path / "other.ckpt").samefile(tmp_path / "best.ckpt")
    io.save_checkpoint(checkpoint, tmp_path / "best.ckpt")
    (tmp_path / "best.ckpt").write_bytes(b"changed by someone else")
    io.save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 3


def test_a_file_system_without_hard_links_gets_a_written_copy(tmp_path, monkeypatch):
    io, checkpoint = identical_saves(tmp_path)

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("crackdet.training.checkpoint_io.os.link", no_links)
    io.save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    assert not (tmp_path / "last.ckpt").samefile(tmp_path / "best.ckpt")
    assert (tmp_path / "last.ckpt").read_bytes() == (tmp_path / "best.ckpt").read_bytes()
    assert not list(tmp_path.glob(".*"))
