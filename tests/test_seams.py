"""Each private API crackdet relies on still works as assumed; these fail when upstream changes."""

from __future__ import annotations

import csv
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.fabric.loggers import csv_logs
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

from crackdet.seams import (
    SeamError,
    continuing_csv_writer,
    log_step_now,
    private_name,
    replace_ddp_child_command,
)


def test_lightning_ddp_launcher_starts_children_with_the_replacement(monkeypatch) -> None:
    from hydra.core.hydra_config import HydraConfig

    started: list[tuple[list[str], str | None]] = []
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, env, cwd: started.append((cmd, cwd)))
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.setenv(name, "0")  # restored afterwards; the launcher overwrites them
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")

    restore = replace_ddp_child_command(lambda rank: ([f"child-{rank}"], "/job"))
    try:
        launcher = pytorch_launcher._SubprocessScriptLauncher(
            LightningEnvironment(), num_processes=3, num_nodes=1
        )
        launcher._call_children_scripts()
    finally:
        restore()
    assert started == [(["child-1"], "/job"), (["child-2"], "/job")]
    assert pytorch_launcher._hydra_subprocess_cmd.__module__.startswith("lightning.")


def test_csv_writer_appends_to_an_earlier_metrics_file(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,step,val/acc\n0,4,0.5\n")
    writer = continuing_csv_writer()(log_dir=str(tmp_path))
    writer.log_metrics({"epoch": 1, "val/acc": 0.75}, step=8)
    writer.save()
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["step"], r["val/acc"]) for r in rows] == [("4", "0.5"), ("8", "0.75")]


def test_a_vanished_private_name_stops_with_the_upstream_version(monkeypatch) -> None:
    monkeypatch.delattr(csv_logs._ExperimentWriter, "_check_log_dir_exists")
    with pytest.raises(SeamError, match=f"lightning {version('lightning')} changed") as error:
        continuing_csv_writer()
    assert "pip install 'lightning>=2.4,<2.7'" in str(error.value)


def test_a_private_name_upstream_no_longer_uses_is_refused(monkeypatch) -> None:
    def children_started_another_way(self) -> None:
        """Stands in for a Lightning release that builds the command elsewhere."""

    monkeypatch.setattr(
        pytorch_launcher._SubprocessScriptLauncher,
        "_call_children_scripts",
        children_started_another_way,
    )
    with pytest.raises(SeamError, match="no longer uses _hydra_subprocess_cmd"):
        replace_ddp_child_command(lambda rank: ([], ""))
    assert private_name(pytorch_launcher, "_hydra_subprocess_cmd", "lightning").__module__ == (
        "lightning.fabric.strategies.launchers.subprocess_script"
    )


def test_tested_versions_are_the_caps_in_pyproject() -> None:
    from crackdet.cli.config import PROJECT_ROOT
    from crackdet.seams import TESTED

    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    for package, versions in TESTED.items():
        assert f'"{package}{versions}"' in pyproject, package


def test_step_logging_seam_calls_what_lightning_calls_after_a_step() -> None:
    calls: list[str] = []
    connector = SimpleNamespace(
        on_batch_end=lambda: calls.append("on_batch_end"),
        update_train_step_metrics=lambda: calls.append("update_train_step_metrics"),
    )
    log_step_now(SimpleNamespace(_logger_connector=connector))
    assert calls == ["on_batch_end", "update_train_step_metrics"]


def test_step_logging_seam_fails_loudly_when_lightning_changes(monkeypatch) -> None:
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    monkeypatch.delattr(logger_connector._LoggerConnector, "update_train_step_metrics")
    with pytest.raises(SeamError, match="update_train_step_metrics"):
        log_step_now(SimpleNamespace(_logger_connector=None))


def test_torch_reports_native_cpu_bf16_through_the_seam():
    import torch

    from crackdet.seams import torch_cpu_has_native_bf16

    # If upstream renames the op, the seam would answer False and bf16 would be refused.
    assert hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
    assert isinstance(torch_cpu_has_native_bf16(), bool)


def test_exit_handlers_run_early_once_and_in_order(tmp_path: Path) -> None:
    # In a child process: running them here would run pytest's own.
    script = (
        "import atexit, sys\n"
        "from crackdet.seams import run_exit_handlers\n"
        "log = open(sys.argv[1], 'a')\n"
        "atexit.register(lambda: log.write('first registered\\n') or log.flush())\n"
        "atexit.register(lambda: log.write('last registered\\n') or log.flush())\n"
        "assert run_exit_handlers() is True\n"
        "log.write('after\\n'); log.flush()\n"
    )
    out = tmp_path / "order.txt"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=60)
    assert out.read_text() == "last registered\nfirst registered\nafter\n"
