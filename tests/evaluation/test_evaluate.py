"""eval.py: a checkpoint's metrics reproduce training's, on any folder, at two thresholds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from crackdet.errors import ConfigError
from crackdet.evaluation.evaluate import evaluate
from crackdet.evaluation.threshold import stored_threshold
from tests.conftest import compose_cfg, run_entry

FIGURES = (
    "confusion_matrix.png",
    "confusion_matrix_operating_point.png",
    "pr_curve.png",
    "roc_curve.png",
    "reliability.png",
)


def _evaluate(out: Path, ckpt: Path, *overrides: str) -> dict:
    return evaluate(
        compose_cfg(
            out, [f"ckpt_path={ckpt}", "data.num_workers=0", *overrides], config_name="eval"
        )
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_reproduces_the_training_runs_test_metrics(trained_run: Path, tmp_path: Path):
    best = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval"
    results = _evaluate(out, best)

    logged = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert results["split"] == "test"
    for name in ("acc", "precision", "recall", "specificity", "f1", "auroc", "loss", "samples"):
        assert results["metrics"][f"test/{name}"] == pytest.approx(logged[f"test/{name}"], abs=1e-6)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(results))

    rows = _rows(out / "predictions.csv")
    assert len(rows) == len({r["path"] for r in rows}) == logged["test/samples"]
    training_rows = _rows(trained_run / "predictions_test.csv")
    assert [(r["path"], r["label"]) for r in rows] == [
        (r["path"], r["label"]) for r in training_rows
    ]
    point = results["operating_point"]
    assert point["threshold"] == stored_threshold(best)
    assert point["source"].startswith("checkpoint")
    counts = [point["metrics"][f"test/{k}"] for k in ("tp", "fp", "tn", "fn")]
    assert sum(counts) == len(rows)
    for name in FIGURES:
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_threshold_chosen_on_validation_reaches_the_target_there(trained_run: Path, tmp_path):
    best = trained_run / "checkpoints" / "best.ckpt"
    # The threshold stored by training, applied to the rebuilt validation split.
    stored = _evaluate(tmp_path / "stored", best, "data.split=val")
    assert stored["operating_point"]["metrics"]["val/recall"] >= 0.99

    # Another target: chosen here on the validation split; calibrated on it as well.
    results = _evaluate(
        tmp_path / "chosen",
        best,
        "data.split=val",
        "eval.target_recall=0.6",
        "eval.temperature_scaling=true",
    )
    point = results["operating_point"]
    assert point["source"] == "validation split"
    assert point["target_recall"] == 0.6
    assert point["metrics"]["val/recall"] >= 0.6
    assert point["threshold"] >= stored["operating_point"]["threshold"]
    calibration = results["calibration"]
    assert calibration["temperature"] > 0
    assert 0 <= calibration["val/ece_scaled"] <= 1


def test_fixed_threshold_and_bad_settings(trained_run: Path, tmp_path: Path):
    best = trained_run / "checkpoints" / "best.ckpt"
    results = _evaluate(tmp_path / "fixed", best, "eval.threshold=0.3")
    assert results["operating_point"]["source"] == "eval.threshold"
    assert results["operating_point"]["metrics"]["test/threshold"] == 0.3

    with pytest.raises(ConfigError, match="data.split=stratified"):
        _evaluate(tmp_path / "bad_split", best, "data.split=stratified")
    with pytest.raises(ConfigError, match="does not exist"):
        _evaluate(tmp_path / "missing", tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="never overwritten"):
        _evaluate(tmp_path / "fixed", best)


@pytest.mark.slow
def test_eval_py_on_another_folder_layout_and_image_size(
    trained_run: Path, image_folder, tmp_path: Path, fresh_cache
):
    folder = image_folder(n_per_class=4, size=64, name="other")
    (folder / "Positive").rename(folder / "cracked")
    (folder / "Negative").rename(folder / "intact")
    out = tmp_path / "eval_other"
    result = run_entry(
        "eval.py",
        f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}",
        f"data.data_dir={folder}",
        "data.split=all",
        "data.classes.positive=[cracked]",
        "data.classes.negative=[intact]",
        "data.num_workers=0",
        f"paths.cache_dir={fresh_cache()}",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 8
    assert {(Path(r["path"]).parent.name, r["label"]) for r in rows} == {
        ("cracked", "1"),
        ("intact", "0"),
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "all"
    assert metrics["metrics"]["all/samples"] == 8
    assert metrics["data"]["image_size"] == 48  # the checkpoint's size, not the folder's
    assert metrics["operating_point"]["source"].startswith("checkpoint")


def test_eval_refuses_several_processes(tmp_path: Path) -> None:
    cfg = compose_cfg(
        tmp_path / "eval",
        [f"ckpt_path={tmp_path / 'best.ckpt'}", "trainer.devices=2"],
        config_name="eval",
    )
    with pytest.raises(ConfigError, match="eval.py runs in one process"):
        evaluate(cfg)
