"""Interrupted runs save a resumable checkpoint, resume exactly, and a full disk loses nothing."""

from __future__ import annotations

import csv
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import crackdet.io
import crackdet.training.checkpoint_io
from crackdet.data.resumable import ResumableDataLoader, ResumableSampler
from crackdet.errors import OutputError
from crackdet.training.checkpoint_io import AtomicCheckpointIO
from crackdet.training.train import train
from tests.conftest import PROJECT_ROOT, TINY, compose_cfg, selected_params

#: Two epochs of 4 batches (28 training images, batch 8), with random flips and dropout, so an
#: exact resume needs the batch order, the random generators and the metric states restored.
TWO_EPOCHS = [
    *TINY,
    "trainer.max_epochs=2",
    "data/augmentation=flip",
    "model.dropout=0.5",
    "~callbacks.evaluation_figures",
    "~callbacks.lr_monitor",
    "logger=csv",
    # last.ckpt after every epoch, however short: these runs are killed and resumed from it.
    "callbacks.last_checkpoint.every_seconds=0",
]
SIGNAL_AT = "+callbacks.interrupt_at._target_=tests.training.interrupting.SignalAtStep"


def start_train(*args: str) -> subprocess.Popen:
    """`python train.py <args>` in a subprocess, output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    """Wait for a started run; its exit status and output."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def printed_resume_command(output: str) -> list[str]:
    """The command the interrupted run printed, as arguments for this Python and train.py."""
    lines = output.splitlines()
    command = shlex.split(lines[lines.index("Resume it with:") + 1])
    assert command[:2] == ["python", "train.py"], command
    return command[2:]


def metric_sections(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in ("fit", "validate", "test", "operating_point")}


#: A checkpoint every 3 training steps as well: step 6 is in the middle of the second epoch.
STEP_CHECKPOINT = [
    "+callbacks.step_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
    "+callbacks.step_checkpoint.dirpath=${paths.output_dir}/checkpoints",
    "+callbacks.step_checkpoint.filename=step",
    "+callbacks.step_checkpoint.every_n_train_steps=3",
    "+callbacks.step_checkpoint.enable_version_counter=false",
]


def logged_metrics(run_dir: Path) -> dict[tuple[int, str], set[float]]:
    """Every value in metrics.csv by (step, metric); a step logged twice keeps both values."""
    logged: dict[tuple[int, str], set[float]] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key != "step" and value != "":
                    logged.setdefault((int(row["step"]), key), set()).add(float(value))
    return logged


def assert_same_log(resumed_dir: Path, reference_dir: Path) -> None:
    """The resumed run logged exactly the uninterrupted run's metrics, value for value."""
    resumed, reference = logged_metrics(resumed_dir), logged_metrics(reference_dir)
    assert sorted(resumed) == sorted(reference)
    differing = {
        key: (sorted(resumed[key]), value)
        for key, (value,) in ((k, tuple(v)) for k, v in reference.items())
        if any(v != pytest.approx(value, rel=1e-6, abs=1e-7) for v in resumed[key])
    }
    assert differing == {}


def start_resume(run_dir: Path, ckpt: Path, common: list[str]) -> subprocess.Popen:
    """`python train.py` resuming `run_dir` from `ckpt`, to the end, started."""
    return start_train(*common, f"hydra.run.dir={run_dir}", f"ckpt_path={ckpt}")


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_resume_ends_like_an_uninterrupted_run(
    tmp_path: Path, synthetic_cache: Path
) -> None:
    common = [*TWO_EPOCHS, f"paths.cache_dir={synthetic_cache}"]
    run_dir = tmp_path / "interrupted"
    # SIGTERM during step 3 of 0..7, the last of the first epoch: the run validates that epoch
    # and stops after the next step, mid-way through the second epoch.
    interrupted = start_train(
        *common, f"hydra.run.dir={run_dir}", SIGNAL_AT, "+callbacks.interrupt_at.step=3"
    )
    # Meanwhile the same run, uninterrupted, in this process.
    train(compose_cfg(tmp_path / "reference", common))
    status, output = finish(interrupted)
    assert status == 128 + signal.SIGTERM, output

    ckpt = run_dir / "checkpoints" / "interrupted.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 5
    assert not (run_dir / "metrics.json").exists()
    resume_args = printed_resume_command(output)
    assert f"ckpt_path={ckpt}" in resume_args and f"hydra.run.dir={run_dir}" in resume_args

    status, output = finish(start_train(*resume_args))
    assert status == 0, output
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8  # the 3 remaining steps only, none repeated
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        logged_steps = {int(row["step"]) for row in csv.DictReader(handle) if row["train/loss"]}
    assert {0, 3, 5, 7} <= logged_steps  # the log of the interrupted part is kept
    resumed, uninterrupted = metric_sections(run_dir), metric_sections(tmp_path / "reference")
    for section, values in uninterrupted.items():
        assert resumed[section] == pytest.approx(values, rel=1e-6, abs=1e-6), section
    assert_same_log(run_dir, tmp_path / "reference")


@pytest.mark.slow
def test_resume_after_sigkill_from_last_or_mid_epoch_checkpoint_logs_the_same_metrics(
    tmp_path: Path, synthetic_cache: Path
) -> None:
    common = [*TWO_EPOCHS, *STEP_CHECKPOINT, f"paths.cache_dir={synthetic_cache}"]
    killed = tmp_path / "killed"
    # SIGKILL (no chance to save) at the start of step 7, the last of the second epoch:
    # last.ckpt holds the end of the first epoch, step.ckpt the middle of the second.
    process = start_train(
        *common,
        f"hydra.run.dir={killed}",
        SIGNAL_AT,
        "+callbacks.interrupt_at.step=7",
        "+callbacks.interrupt_at.signal_name=SIGKILL",
    )
    train(compose_cfg(tmp_path / "reference", common))
    status, output = finish(process)
    assert status == -signal.SIGKILL, output

    mid_epoch = tmp_path / "mid_epoch"
    shutil.copytree(killed, mid_epoch)
    # Two independent resumes of copies of the killed run: side by side.
    resumes = {
        run_dir: start_resume(run_dir, run_dir / "checkpoints" / name, common)
        for run_dir, name in ((killed, "last.ckpt"), (mid_epoch, "step.ckpt"))
    }
    for run_dir, (status, output) in {d: finish(p) for d, p in resumes.items()}.items():
        assert status == 0, output
        assert_same_log(run_dir, tmp_path / "reference")


SECOND_SIGNAL_TEST = "test_a_second_signal_says_what_was_saved_and_what_was_not"


@pytest.fixture(scope="module")
def second_signal_runs(
    request: pytest.FixtureRequest, tmp_path_factory, synthetic_cache: Path
) -> dict[tuple[str, str], tuple[Path, int, str]]:
    """Run directory, exit status and output of every selected case of the test below.

    Each signal goes to the run's own process at a training step, so the cases run side by side.
    """
    started = {}
    for params in selected_params(request, SECOND_SIGNAL_TEST):
        signal_name, again = params["signal_name"], params["again"]
        run_dir = tmp_path_factory.mktemp(f"{signal_name}-{again}") / "run"
        process = start_train(
            *TWO_EPOCHS,
            f"paths.cache_dir={synthetic_cache}",
            f"hydra.run.dir={run_dir}",
            SIGNAL_AT,
            "+callbacks.interrupt_at.step=5",
            f"+callbacks.interrupt_at.signal_name={signal_name}",
            f"+callbacks.interrupt_at.again={again}",
        )
        started[signal_name, again] = run_dir, process
    return {case: (d, *finish(process)) for case, (d, process) in started.items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signal_name", "again", "when", "step"),
    [
        # Both signals during step 5: it stops before finishing it.
        ("SIGTERM", "at_once", "before the checkpoint was saved", 5),
        # The second one while saving after step 5.
        ("SIGINT", "while_saving", "while interrupted.ckpt was saved", 6),
    ],
)
def test_a_second_signal_says_what_was_saved_and_what_was_not(
    second_signal_runs, signal_name: str, again: str, when: str, step: int
) -> None:
    run_dir, status, output = second_signal_runs[signal_name, again]
    assert status == 128 + signal.Signals[signal_name], output
    assert "Traceback" not in output
    assert (
        f"Received {signal_name} again {when}: stopped at once at epoch 1, step {step}; "
        "interrupted.ckpt was NOT saved (no partial file is left)."
    ) in output
    assert "last.ckpt (epoch 0, step 4)" in output
    ckpt_dir = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt"]
    lines = output.splitlines()
    command = shlex.split(lines[lines.index("Resume from the newest with:") + 1])
    assert f"ckpt_path={ckpt_dir / 'last.ckpt'}" in command


def test_ctrl_c_in_the_last_step_stops_after_validation_and_resumes_to_the_end(
    tiny_cfg, tmp_path: Path
) -> None:
    handlers_before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    interrupt = [
        SIGNAL_AT,
        "+callbacks.interrupt_at.step=3",
        "+callbacks.interrupt_at.signal_name=SIGINT",
    ]
    with pytest.raises(SystemExit) as stopped:
        train(tiny_cfg(*interrupt))
    assert stopped.value.code == 128 + signal.SIGINT
    # Ctrl-C and SIGTERM act as before again once training has stopped.
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers_before
    ckpt = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4  # all of the only epoch
    assert not (tmp_path / "run" / "metrics.json").exists()  # not tested yet

    resumed = train(tiny_cfg(*interrupt, f"ckpt_path={ckpt}"))
    uninterrupted = train(tiny_cfg(run_dir=tmp_path / "reference"))
    for section in ("fit", "test", "operating_point"):
        assert resumed[section] == pytest.approx(uninterrupted[section], rel=1e-6, abs=1e-6)


def test_loader_resumes_with_exactly_the_batches_not_yet_seen() -> None:
    data = list(range(23))

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=4, sampler=ResumableSampler(data, seed=3))

    def epoch(dl: ResumableDataLoader, number: int) -> list[list[int]]:
        dl.sampler.set_epoch(number)
        return [batch.tolist() for batch in dl]

    full = epoch(loader(), 1)
    assert sorted(sum(full, [])) == data and full != epoch(loader(), 2)
    interrupted = loader()
    interrupted.sampler.set_epoch(1)
    batches = iter(interrupted)
    seen = [next(batches).tolist() for _ in range(2)]
    state = interrupted.state_dict()

    resumed = loader()
    resumed.load_state_dict(state)
    assert seen + epoch(resumed, 1) == full
    assert epoch(resumed, 2) == epoch(loader(), 2)  # the next epoch is whole again


class _DiskFullAfterHalf:
    """Stands in for `os` in crackdet.io: files take half of what is written, then ENOSPC."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd: int, mode: str = "r"):
        return _HalfWriter(os.fdopen(fd, mode))


class _HalfWriter:
    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.close()

    def write(self, data: bytes) -> None:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_last_checkpoint_loadable_and_says_so(
    tiny_cfg, tmp_path: Path, monkeypatch
) -> None:
    cfg = tiny_cfg(
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1",
        "callbacks.last_checkpoint.every_seconds=0",  # written after epoch 0, then again
    )
    assert isinstance(instantiate(cfg.trainer).strategy.checkpoint_io, AtomicCheckpointIO)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    real_write = crackdet.training.checkpoint_io.atomic_write_bytes

    def disk_full_once_last_exists(path, data):
        if Path(path) == last and last.exists():
            monkeypatch.setattr(crackdet.io, "os", _DiskFullAfterHalf())
        return real_write(path, data)

    monkeypatch.setattr(
        crackdet.training.checkpoint_io, "atomic_write_bytes", disk_full_once_last_exists
    )
    with pytest.raises(OutputError) as failed:
        train(cfg)
    message = str(failed.value)
    assert str(last) in message and "disk is full" in message
    kept = torch.load(last, weights_only=True)
    assert kept["epoch"] == 0 and kept["global_step"] == 1  # the first epoch's, whole
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []
