"""A run's scan started ahead in a child process: the same result, used once, never waited for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crackdet.cli.scan_ahead import ScanAhead
from crackdet.data import scan
from crackdet.data.datamodule import CrackDataModule
from crackdet.data.scan import scan_ahead, scan_folder
from crackdet.errors import DataError

CLASSES = {"negative": ["Negative"], "positive": ["Positive"]}


@pytest.fixture(autouse=True)
def no_scan_left_running():
    yield
    for ahead in scan._AHEAD.values():
        ahead.cancel()
    scan._AHEAD.clear()


def folder_with_a_bad_file(image_folder) -> Path:
    root = image_folder(n_per_class=3)
    (root / "Positive" / "cut.jpg").write_bytes(
        (root / "Negative" / "00000.jpg").read_bytes()[:200]
    )
    return root


def test_scan_folder_takes_the_result_of_the_scan_started_ahead(image_folder, tmp_path: Path):
    root = folder_with_a_bad_file(image_folder)
    expected = scan_folder(root, CLASSES, cache_dir=tmp_path / "reference-cache")
    assert expected.bad_files and expected.records  # the comparison covers both kinds

    scan_ahead(root, CLASSES, cache_dir=tmp_path / "cache")
    scan._AHEAD[scan._scan_key(root, CLASSES, tmp_path / "cache")]._process.wait(timeout=60)
    # Added after the scan ran: it is not in the result, which is the scan started ahead.
    (root / "Negative" / "added.jpg").write_bytes((root / "Negative" / "00000.jpg").read_bytes())
    assert scan_folder(root, CLASSES, cache_dir=tmp_path / "cache") == expected
    assert not scan._AHEAD
    # The result is used once: the next scan is a new one and finds the added file.
    rescanned = scan_folder(root, CLASSES, cache_dir=tmp_path / "cache")
    assert len(rescanned.records) == len(expected.records) + 1


def test_a_scan_that_fails_ahead_fails_again_in_this_process(tmp_path: Path):
    scan_ahead(tmp_path / "missing", CLASSES)
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        scan_folder(tmp_path / "missing", CLASSES)


def test_a_scan_of_another_folder_stops_the_one_started_ahead(image_folder, tmp_path: Path):
    first, second = image_folder(n_per_class=2, name="a"), image_folder(n_per_class=2, name="b")
    scan_ahead(first, CLASSES)
    started = next(iter(scan._AHEAD.values()))
    result = scan_folder(second, CLASSES)
    assert {Path(r.path).parent.parent for r in result.records} == {second}
    assert started._process.poll() is not None and not scan._AHEAD


def test_a_process_that_ends_before_it_needs_the_scan_does_not_wait_for_it(image_folder):
    # The child is stopped mid-scan (as if the folder took hours): the process must end at once,
    # and take the child with it.
    code = (
        "import os, signal, sys\n"
        "from crackdet.data import scan\n"
        "scan.scan_ahead(sys.argv[1], {'negative': ['Negative'], 'positive': ['Positive']})\n"
        "child = next(iter(scan._AHEAD.values()))._process\n"
        "os.kill(child.pid, signal.SIGSTOP)\n"
        "print(child.pid, flush=True)\n"
        "sys.exit(2)\n"
    )
    root = image_folder(n_per_class=2)
    result = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    child = int(result.stdout.split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def run_config(task: str = "train", **data) -> OmegaConf:
    return OmegaConf.create({"task_name": task, "data": {"classes": CLASSES, **data}})


def test_a_training_run_starts_scanning_its_data_folder(image_folder, tmp_path: Path):
    root = image_folder(n_per_class=2)
    ScanAhead().on_run_start(run_config(data_dir=str(root), cache_dir=str(tmp_path / "c")))
    assert list(scan._AHEAD) == [scan._scan_key(root, CLASSES, tmp_path / "c")]


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(lambda root: run_config("eval", data_dir=str(root)), id="not-training"),
        pytest.param(lambda root: run_config(data_dir=str(root / "missing")), id="no-folder"),
        pytest.param(
            lambda root: run_config(data_dir=str(root), synthetic={"n_per_class": 2}),
            id="synthetic",
        ),
        pytest.param(lambda root: run_config(data_dir="${missing.key}"), id="unresolvable"),
    ],
)
def test_no_scan_is_started_where_the_data_module_would_not_scan_that_folder(image_folder, config):
    ScanAhead().on_run_start(config(image_folder(n_per_class=1)))
    assert not scan._AHEAD


def test_ddp_children_do_not_scan_ahead(image_folder, monkeypatch):
    # (A DDP child starts without Lightning: process_rank reads LOCAL_RANK; this process has it.)
    monkeypatch.setattr("crackdet.cli.scan_ahead.process_rank", lambda: 1)
    ScanAhead().on_run_start(run_config(data_dir=str(image_folder(n_per_class=1))))
    assert not scan._AHEAD


def test_the_data_module_takes_the_scan_the_run_started(image_folder, tmp_path: Path):
    root = image_folder(n_per_class=2)
    config = run_config(data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    ScanAhead().on_run_start(config)
    (started,) = scan._AHEAD.values()
    dm = CrackDataModule(
        str(root), classes=CLASSES, cache_dir=str(tmp_path / "cache"), image_size=32, split="all"
    )
    dm.prepare_data()
    assert started._process.returncode == 0  # finished and used, not stopped as unneeded
    assert len(dm.scan.records) == 4 and not scan._AHEAD
