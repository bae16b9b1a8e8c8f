"""A start that fails names every problem at once and leaves every folder as it found it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crackdet.cli.config import compose_config
from crackdet.cli.run_dir import RunDirRecord
from crackdet.cli.validation import (
    check_resume_checkpoint,
    check_settings,
    reused_sweep_problem,
    validate_train_config,
)
from crackdet.errors import ConfigError
from tests.conftest import PROJECT_ROOT


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below `folder` with its content (None for folders)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(
    "override,expected",
    [
        ("data.image_size=abc", "data.image_size=abc must be an integer, 32 or more"),
        ("data.batch_size=1.5", "data.batch_size=1.5 must be an integer, 1 or more"),
        ("trainer.precision=bogus", "one of: 32-true, 16-mixed, bf16-mixed"),
        ("data.split=random", "data.split=random must be one of: seed, stratified, all"),
        ("trainer.limit_train_batches=1.5", "an integer, 0 or more, or a number in [0.0, 1.0]"),
        ("model.bn_mode=eval", "model.bn_mode=eval must be one of: frozen, train"),
        ("trainer.deterministic=yes", "one of: True, False, warn, null"),
        ("data.num_workers=-1", "data.num_workers=-1 must be an integer, 0 or more"),
        # Lightning's accelerators, looked up when the rule is first used.
        ("trainer.accelerator=tpuu", "trainer.accelerator=tpuu must be one of: auto, gpu, cpu"),
    ],
)
def test_a_bad_value_is_named_with_what_it_must_be(
    tmp_path: Path, override: str, expected: str
) -> None:
    assert any(expected in p for p in check_settings(compose_config(tmp_path, [override])))


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=smoke"], ["experiment=baseline"], ["trainer=ddp_cpu"], ["trainer=gpu"]],
)
def test_shipped_configs_pass_every_rule(tmp_path: Path, overrides: list[str]) -> None:
    assert check_settings(compose_config(tmp_path, overrides)) == []


def test_legacy_precision_spellings_are_accepted(tmp_path: Path) -> None:
    for precision in ("16", "bf16", "32"):
        assert check_settings(compose_config(tmp_path, [f"trainer.precision={precision}"])) == []


def test_every_problem_is_reported_at_once(tiny_cfg, tmp_path: Path) -> None:
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    cfg = tiny_cfg(
        "data.image_size=abc",
        "data.batch_size=1.5",
        "trainer.precision=bogus",
        "data.synthetic=null",
        f"data.data_dir={tmp_path / 'nowhere'}",
        f"model.weights={tmp_path / 'missing.pt'}",
        f"ckpt_path={tmp_path / 'text.ckpt'}",
    )
    with pytest.raises(ConfigError) as raised:
        validate_train_config(cfg)
    message = str(raised.value)
    assert message.startswith("6 problems stop this run")
    for setting in ("data.image_size=abc", "data.batch_size=1.5", "trainer.precision=bogus"):
        assert setting in message
    assert f"data.data_dir={tmp_path / 'nowhere'} does not exist" in message
    assert f"model.weights={tmp_path / 'missing.pt'}" in message
    assert f"ckpt_path={tmp_path / 'text.ckpt'} is a text file" in message


def test_a_plain_state_dict_is_no_checkpoint_to_resume(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="is not a training checkpoint"):
        check_resume_checkpoint(str(tmp_path / "weights.pt"))


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_checkpoint_is_named(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "loops": {}}, path)
    check_resume_checkpoint(str(path))  # whole, it passes
    whole = path.read_bytes()
    damaged = {"truncated": whole[: len(whole) // 2], "empty": b"", "text": b"epoch=3\n"}
    path.write_bytes(damaged[damage])
    named = f"ckpt_path={path} (is truncated or damaged|is empty|is a text file)"
    with pytest.raises(ConfigError, match=named):
        check_resume_checkpoint(str(path))


def fake_start(run_dir: Path) -> None:
    """What Hydra and the loggers write before a task can fail: the record, the log, an event."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("new config")
    (run_dir / ".hydra" / "overrides.yaml").write_text("new overrides")
    with (run_dir / "train.log").open("a") as log:
        log.write("new start\n")
    (run_dir / "tensorboard" / "version_1").mkdir(parents=True)
    (run_dir / "tensorboard" / "version_1" / "events.out").write_bytes(b"hparams")
    (run_dir / "checkpoints").mkdir(exist_ok=True)


def test_a_failed_start_removes_the_folders_it_created(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "train" / "run"
    record = RunDirRecord.take(run_dir)
    fake_start(run_dir)
    assert record.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_leaves_an_earlier_run_as_it_was(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("earlier config")
    (run_dir / "train.log").write_text("earlier log\n")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run_dir / "tensorboard" / "version_0").mkdir(parents=True)
    (run_dir / "tensorboard" / "version_0" / "events.out").write_bytes(b"curves")
    before = snapshot(run_dir)
    record = RunDirRecord.take(run_dir)
    fake_start(run_dir)
    assert record.undo()
    assert snapshot(run_dir) == before


def test_a_run_that_wrote_results_is_kept(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    record = RunDirRecord.take(run_dir)
    fake_start(run_dir)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    written = snapshot(run_dir)
    assert not record.undo()
    assert snapshot(run_dir) == written


def test_a_sweep_folder_holding_a_sweep_is_refused_with_the_fix(tmp_path: Path) -> None:
    assert reused_sweep_problem(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert reused_sweep_problem(tmp_path / "empty") is None
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    problem = reused_sweep_problem(tmp_path / "sweep")
    assert problem is not None
    assert f"hydra.sweep.dir={tmp_path / 'sweep'} already holds a sweep" in str(problem)
    assert "Leave hydra.sweep.dir unset" in str(problem)


def wait(process: subprocess.Popen) -> tuple[int, str]:
    """The exit status and the whole output of a started entry point."""
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def start(*args: str, script: str = "train.py") -> subprocess.Popen:
    """Start `python <script> <args>` (in the background, so several start at once)."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_failed_starts_through_train_py_leave_every_folder_as_it_was(tmp_path: Path) -> None:
    # 1. Mistakes found before Hydra writes anything, all in one message.
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "earlier.txt").write_text("a file of the user")
    # 2. Found by the task after Hydra made the run folder: empty class folders.
    empty_data = tmp_path / "empty_data"
    for name in ("Positive", "Negative"):
        (empty_data / name).mkdir(parents=True)
    empty_outputs = tmp_path / "empty_outputs"
    # 3. An earlier run's folder, refused by the task after Hydra wrote its record there.
    earlier = tmp_path / "earlier_run"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / ".hydra" / "config.yaml").write_text("the earlier run's config")
    (earlier / ".hydra" / "overrides.yaml").write_text("- seed=1")
    (earlier / "train.log").write_text("the earlier run's log\n")
    (earlier / "checkpoints").mkdir()
    (earlier / "checkpoints" / "last.ckpt").write_bytes(b"earlier weights")
    # 4. A sweep folder holding an earlier sweep.
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "sweep_job.json").write_text('{"status": "ok"}')
    (sweep / "summary.csv").write_text("rank,job,status\n1,0,ok\n")
    before = {p: snapshot(p) for p in (outputs, earlier, sweep)}

    tiny = ["experiment=smoke", "data.synthetic.n_per_class=4", "data.image_size=48"]
    started = {
        "mistakes": start(
            *tiny,
            f"paths.log_dir={outputs}",
            "data.image_size=abc",
            "trainer.precision=bogus",
            "data.batch_size=1.5",
            f"model.weights={tmp_path / 'missing.pt'}",
        ),
        "empty data": start(
            *tiny,
            f"paths.log_dir={empty_outputs}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data.synthetic=null",
            f"data.data_dir={empty_data}",
        ),
        "earlier run": start(*tiny, f"hydra.run.dir={earlier}", f"paths.log_dir={outputs}"),
        "eval, no checkpoint": start(
            f"ckpt_path={tmp_path / 'missing.ckpt'}", f"paths.log_dir={outputs}", script="eval.py"
        ),
        "reused sweep": start("-m", *tiny, f"hydra.sweep.dir={sweep}", "seed=1,2"),
    }
    results = {name: wait(process) for name, process in started.items()}
    for name, (status, output) in results.items():
        assert status == 2, f"{name}: {output}"
        assert "Traceback" not in output, f"{name}: {output}"

    mistakes = results["mistakes"][1]
    assert "4 problems stop this run before it starts" in mistakes
    for text in (
        "data.image_size=abc",
        "trainer.precision=bogus",
        "32-true",
        "data.batch_size=1.5",
    ):
        assert text in mistakes
    assert f"model.weights={tmp_path / 'missing.pt'}" in mistakes
    assert "already holds a training run" in results["earlier run"][1]
    assert "already holds a sweep" in results["reused sweep"][1]

    assert {p: snapshot(p) for p in (outputs, earlier, sweep)} == before
    assert "empty_data" in results["empty data"][1]
    assert not empty_outputs.exists(), snapshot(empty_outputs)
