"""`--help` and `--cfg job` answer without importing torch or Lightning (they take seconds);
predict.py classifies photos without importing Lightning or torchmetrics."""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crackdet.cli.config import PROJECT_ROOT
from crackdet.data.synthetic import synthetic_image

# The entry points leave with os._exit after running the exit handlers, so the probe reports
# from one (registered first, it runs last).
PROBE = """
import atexit, runpy, sys
atexit.register(
    lambda: print(sorted({{m.split(".")[0] for m in sys.modules}} & {packages!r}), flush=True)
)
sys.argv = [{script!r}, *{args!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
"""
#: Lightning and what it imports that predict.py needs none of (seconds to import).
LIGHTNING = {"lightning", "pytorch_lightning", "torchmetrics"}


def imported_heavy_packages(
    script: str, args: list[str], packages: tuple[str, ...] = ("torch", "lightning")
) -> str:
    """The last line the probe prints: which of `packages` `script args` imported."""
    code = PROBE.format(script=str(PROJECT_ROOT / script), args=args, packages=set(packages))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py", "export.py"])
@pytest.mark.parametrize("args", [["--cfg", "job"], ["--help"]])
def test_entry_points_answer_without_torch(script: str, args: list[str]):
    assert imported_heavy_packages(script, args) == "[]"


def test_the_baseline_config_prints_without_torch():
    # The weights' input size is resolved through torchvision only when the config is used.
    assert imported_heavy_packages("train.py", ["experiment=baseline", "--cfg", "job"]) == "[]"


def test_predict_and_every_hydra_callback_import_without_lightning():
    # The callbacks of conf/hydra/default.yaml run in every entry point, predict.py included.
    hydra_cfg = yaml.safe_load((PROJECT_ROOT / "conf" / "hydra" / "default.yaml").read_text())
    modules = [c["_target_"].rsplit(".", 1)[0] for c in hydra_cfg["callbacks"].values()]
    code = "; ".join(f"import {m}" for m in ["crackdet.deploy.predict", *modules])
    probe = f"import sys; {code}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert "torch" in imported and not imported & LIGHTNING


def test_every_hydra_callback_imports_without_torch():
    # Hydra instantiates them all before the first one runs: importing torch there (seconds)
    # would hold back the data scan that starts as a run does (crackdet.cli.scan_ahead).
    hydra_cfg = yaml.safe_load((PROJECT_ROOT / "conf" / "hydra" / "default.yaml").read_text())
    modules = [c["_target_"].rsplit(".", 1)[0] for c in hydra_cfg["callbacks"].values()]
    code = "; ".join(f"import {m}" for m in modules)
    probe = f"import sys; {code}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert "hydra" in imported and not imported & {"torch", "torchvision", *LIGHTNING}


@pytest.mark.slow
def test_a_prediction_run_imports_neither_lightning_nor_torchmetrics(
    trained_run: Path, image_folder, tmp_path: Path
):
    photos = image_folder(n_per_class=2, size=40)
    synthetic_image(0, 256, crack=True).resize((500, 300)).save(photos / "wall.jpg")  # tiled
    run_dir = tmp_path / "run"
    args = [
        f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}",
        f"input={photos}",
        f"hydra.run.dir={run_dir}",
    ]
    imported = imported_heavy_packages("predict.py", args, ("torch", *LIGHTNING))
    with open(run_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and all(row["prob_crack"] for row in rows)
    assert list((run_dir / "heatmaps").iterdir())
    assert imported == "['torch']"
