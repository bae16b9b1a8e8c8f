"""The README's commands work as written: the quick start, the reference run, CI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from crackdet.cli.config import PROJECT_ROOT
from tests.conftest import run_entry

README = (PROJECT_ROOT / "README.md").read_text()


def first_code_block() -> list[str]:
    """Commands of the README's first fenced block, without their comments."""
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_first_lines_install_run_and_test() -> None:
    assert README.index("```bash") < 40, "the two commands must open the README"
    install_and_run, test = first_code_block()
    assert install_and_run.startswith('pip install -e ".[all,dev]" && python train.py ')
    assert test == "pytest"


def test_ci_installs_and_tests_like_the_readme() -> None:
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    install = first_code_block()[0].split(" && ")[0]
    assert f"python -m {install}" in ci or install in ci
    assert re.search(r"^python -m pytest\s*$|^pytest\s*$", ci, re.M)


def latest_run(log_dir: Path) -> Path:
    runs = sorted((log_dir / "train").iterdir())
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
def test_quick_start_trains_well_above_chance(tmp_path: Path) -> None:
    command = first_code_block()[0].split(" && ")[1].split()
    assert command[:2] == ["python", "train.py"]
    result = run_entry("train.py", *command[2:], f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((latest_run(tmp_path) / "metrics.json").read_text())
    assert metrics["test"]["test/samples"] == 60
    assert metrics["test"]["test/acc"] >= 0.8


@pytest.mark.slow
def test_reference_run_without_weights_says_how_to_get_them(tmp_path: Path, image_folder) -> None:
    data = image_folder(n_per_class=4, size=32)
    # A proxy on a closed local port: the weights download fails at once, as it does offline.
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    result = run_entry(
        "train.py",
        "experiment=baseline",
        f"data.data_dir={data}",
        f"paths.log_dir={tmp_path}",
        env=env,
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in output
    assert "model.weights=/path/to/resnet18-f37072fd.pth" in output
    assert not list(tmp_path.glob("train/*/checkpoints/*")), "no training may start without weights"


@pytest.mark.slow
def test_reference_run_with_a_local_weights_file(tmp_path: Path, image_folder) -> None:
    data = image_folder(n_per_class=8, size=32)
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18().state_dict(), weights)
    result = run_entry(
        "train.py",
        "experiment=baseline",
        f"data.data_dir={data}",
        f"model.weights={weights}",
        "data.image_size=32",
        "data.num_workers=0",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = latest_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["val/samples"] == 4  # the notebook's split: last 25% for validation
    assert "test" not in metrics
    assert (run / "predictions_val.csv").is_file()


def test_print_config_command() -> None:
    result = run_entry("train.py", "experiment=baseline", "--cfg", "job")
    assert result.returncode == 0
    assert "weights: IMAGENET1K_V1" in result.stdout and "batch_size: 100" in result.stdout
