"""predict.py keeps every row through crashes, kills and Ctrl-C, and continues where it stopped."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import crackdet.deploy.predict
from crackdet.deploy.predict import predict
from crackdet.errors import ConfigError, DataError
from tests.conftest import PROJECT_ROOT, compose_cfg

#: Runs predict.py with the image reader sending a signal to its own process at one image.
SIGNAL_AT_IMAGE = """
import os, runpy, signal, sys
import crackdet.deploy.predict as predict
read, calls = predict.load_rgb, []
def reader(path):
    calls.append(path)
    if len(calls) == int(os.environ["SIGNAL_AT_IMAGE"]):
        os.kill(os.getpid(), signal.Signals[os.environ["SIGNAL_NAME"]])
    return read(path)
predict.load_rgb = reader
sys.argv = ["predict.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["PROJECT_ROOT"], "predict.py"), run_name="__main__")
"""


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _cfg(ckpt: Path, photos: Path, run_dir: Path, *overrides: str):
    args = [f"ckpt_path={ckpt}", f"input={photos}", "predict.batch_size=2", *overrides]
    return compose_cfg(run_dir, args, config_name="predict")


def _signalled_predict(signal_name: str, at: int, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SIGNAL_AT_IMAGE": str(at),
        "SIGNAL_NAME": signal_name,
        "PROJECT_ROOT": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", SIGNAL_AT_IMAGE, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def best_ckpt(trained_run: Path) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


@pytest.fixture
def photos(image_folder) -> Path:
    return image_folder(n_per_class=4, size=40)  # 8 images


def test_crash_keeps_the_rows_and_a_rerun_skips_them(
    best_ckpt: Path, photos: Path, tmp_path: Path, monkeypatch
):
    run_dir, batches = tmp_path / "run", []
    probabilities = crackdet.deploy.predict._Predictor.probabilities

    def crashing_model(self, batch):
        batches.append(len(batch))
        if len(batches) == 3:
            raise RuntimeError("CUDA out of memory")
        return probabilities(self, batch)

    monkeypatch.setattr(crackdet.deploy.predict._Predictor, "probabilities", crashing_model)
    with pytest.raises(RuntimeError, match="out of memory"):
        predict(_cfg(best_ckpt, photos, run_dir))
    kept = _rows(run_dir)
    assert len(kept) == 4  # two whole batches of 2, flushed before the crash
    assert all(r["prob_crack"] for r in kept)

    with pytest.raises(ConfigError, match="never overwritten. Continue it with predict.resume"):
        predict(_cfg(best_ckpt, photos, run_dir))
    assert _rows(run_dir) == kept

    monkeypatch.setattr(crackdet.deploy.predict._Predictor, "probabilities", probabilities)
    summary = predict(_cfg(best_ckpt, photos, run_dir, "predict.resume=true"))
    rows = _rows(run_dir)
    assert summary["already_done"] == 4 and summary["images"] == 4
    assert rows[:4] == kept and len({r["path"] for r in rows}) == len(rows) == 8


def test_a_line_cut_short_by_a_kill_is_redone(best_ckpt: Path, photos: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    predict(_cfg(best_ckpt, photos, run_dir))
    whole = (run_dir / "predictions.csv").read_bytes()
    lines = whole.splitlines(keepends=True)
    (run_dir / "predictions.csv").write_bytes(b"".join(lines[:4]) + lines[4][:10])
    predict(_cfg(best_ckpt, photos, run_dir, "predict.resume=true"))
    rows = _rows(run_dir)
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in _rows_of(whole))


def _rows_of(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(data.decode().splitlines()))


def test_all_unreadable_images_exit_with_the_reason(best_ckpt: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.jpg", "b.png"):
        (broken / name).write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"None of the 2 image\(s\) of input=.* could be read"):
        predict(_cfg(best_ckpt, broken, tmp_path / "run"))
    assert all(r["error"] for r in _rows(tmp_path / "run"))


@pytest.mark.slow
def test_ctrl_c_says_what_was_written_and_the_printed_command_continues(
    best_ckpt: Path, photos: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    args = [f"ckpt_path={best_ckpt}", f"input={photos}", "predict.batch_size=2"]
    stopped = _signalled_predict("SIGINT", 6, *args, f"hydra.run.dir={run_dir}")
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + signal.SIGINT, output
    assert "Traceback" not in output
    (message,) = [line for line in output.splitlines() if "stopped after" in line]
    assert f"SIGINT: stopped after 4 of 8 image(s); {run_dir / 'predictions.csv'}" in message
    assert len(_rows(run_dir)) == 4

    command = shlex.split(message.split("Continue with: ")[1])
    assert command[:2] == ["python", "predict.py"] and "predict.resume=true" in command
    finished = subprocess.run(
        [sys.executable, *command[1:]], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr
    assert len({r["path"] for r in _rows(run_dir)}) == len(_rows(run_dir)) == 8


@pytest.mark.slow
def test_sigkill_keeps_the_rows_of_finished_batches(best_ckpt: Path, photos: Path, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"ckpt_path={best_ckpt}", f"input={photos}", "predict.batch_size=2"]
    killed = _signalled_predict("SIGKILL", 7, *args, f"hydra.run.dir={run_dir}")
    assert killed.returncode == -signal.SIGKILL
    assert len(_rows(run_dir)) == 6


def _other_model(ckpt: Path, target: Path) -> Path:
    """`ckpt` with another head: the same settings, other predictions."""
    import torch

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    head = next(k for k in checkpoint["state_dict"] if ".head." in k and k.endswith("weight"))
    checkpoint["state_dict"][head] = -checkpoint["state_dict"][head]
    torch.save(checkpoint, target)
    return target


@pytest.mark.parametrize(
    "change, named",
    [
        ("other-checkpoint", "ckpt_path (the checkpoint's content)"),
        ("predict.tile_size=32", "predict.tile_size: 227 there, 32 here"),
        ("predict.backbone_precision=bf16", "the backbone precision"),
    ],
)
def test_resuming_with_another_model_or_settings_is_refused_by_name(
    best_ckpt: Path, photos: Path, tmp_path: Path, monkeypatch, change: str, named: str
):
    run_dir = tmp_path / "run"
    predict(_cfg(best_ckpt, photos, run_dir, "predict.threshold=0.5"))
    # Refused before any runtime is built (so bf16 needs no bf16 CPU here).
    monkeypatch.setattr(crackdet.deploy.predict, "_Predictor", None)
    before = (run_dir / "predictions.csv").read_bytes()
    ckpt, overrides = best_ckpt, ["predict.threshold=0.5", "predict.resume=true"]
    if change == "other-checkpoint":
        ckpt = _other_model(best_ckpt, tmp_path / "other.ckpt")
    else:
        overrides.append(change)
    with pytest.raises(ConfigError, match="would not be comparable") as refused:
        predict(_cfg(ckpt, photos, run_dir, *overrides))
    assert named in str(refused.value) and "leave hydra.run.dir unset" in str(refused.value)
    assert (run_dir / "predictions.csv").read_bytes() == before


def test_resuming_with_the_same_checkpoint_moved_elsewhere_continues(
    best_ckpt: Path, photos: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    predict(_cfg(best_ckpt, photos, run_dir))
    lines = (run_dir / "predictions.csv").read_bytes().splitlines(keepends=True)
    (run_dir / "predictions.csv").write_bytes(b"".join(lines[:3]))  # header + 2 rows
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    moved.write_bytes(best_ckpt.read_bytes())
    summary = predict(_cfg(moved, photos, run_dir, "predict.resume=true"))
    assert summary["already_done"] == 2 and len(_rows(run_dir)) == 8


def test_a_file_without_a_settings_record_is_continued_with_a_warning(
    best_ckpt: Path, photos: Path, tmp_path: Path, caplog
):
    run_dir = tmp_path / "run"
    predict(_cfg(best_ckpt, photos, run_dir))
    (run_dir / "predictions_settings.json").unlink()  # as an earlier crackdet left it
    predict(_cfg(best_ckpt, photos, run_dir, "predict.resume=true"))
    assert "has no predictions_settings.json" in caplog.text and len(_rows(run_dir)) == 8
