"""A sweep over backbones and trainable modes: the cost columns of summary.csv and its figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from crackdet.cli.sweep_figure import FIGURE_FILE, plot_accuracy_vs_speed
from crackdet.cli.sweeps import COST_COLUMNS, collect_jobs, varying_overrides, write_summary
from tests.conftest import TINY, run_entry


def _job(sweep: Path, number: int, overrides: list[str], acc: float, rate: float | None) -> None:
    job_dir = sweep / str(number)
    job_dir.mkdir(parents=True)
    cost = {"parameters": 100 + number, "trainable_parameters": number, "cached_features": False}
    record = {
        "job": number,
        "status": "ok",
        "overrides": overrides,
        "optimized_metric": "val/acc",
        "value": acc,
        "metrics": {"val/acc": acc},
        "cost": {**cost, "train_images_per_s": rate},
        "error": "",
        "output_dir": str(job_dir),
    }
    (job_dir / "sweep_job.json").write_text(json.dumps(record))


def test_summary_lists_costs_and_the_figure_plots_jobs_that_have_them(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["model.backbone=resnet18"], 0.9, 500.0)
    _job(sweep, 1, ["model.backbone=resnet50"], 0.95, 120.0)
    _job(sweep, 2, ["model.backbone=convnext_tiny"], 0.97, None)  # measured nothing
    rows = write_summary(sweep)
    with open(sweep / "summary.csv", newline="") as handle:
        table = {r["job"]: r for r in csv.DictReader(handle)}
    assert [table[j]["train_images_per_s"] for j in "012"] == ["500.0", "120.0", ""]
    assert [table[j]["parameters"] for j in "012"] == ["100", "101", "102"]
    assert plot_accuracy_vs_speed(rows, varying_overrides(rows), sweep) == sweep / FIGURE_FILE
    assert Image.open(sweep / FIGURE_FILE).size[0] > 300
    unmeasured = [r for r in rows if r["job"] == 2]
    assert plot_accuracy_vs_speed(unmeasured, [[]], tmp_path) is None  # no job with a speed


#: The overrides the sweep below varies.
SWEPT = ("model.backbone=", "model.trainable=")


@pytest.mark.slow
def test_backbone_and_trainable_sweep_summary_lists_what_each_job_cost(
    tmp_path: Path, synthetic_cache: Path
) -> None:
    sweep = tmp_path / "sweep"
    result = run_entry(
        "train.py",
        "-m",
        *TINY,
        f"paths.cache_dir={synthetic_cache}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={sweep}",
        "test=false",
        "model.backbone=resnet18,mobilenet_v3_large",
        "model.trainable=head,last_stage",
        # A new random MobileNet would be exported to ONNX before its features (seconds).
        "model.backbone_runtime=eager",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert set(COST_COLUMNS) <= set(rows[0])
    by_job = {}
    for row in rows:
        cost = json.loads((Path(row["output_dir"]) / "metrics.json").read_text())["cost"]
        assert int(row["parameters"]) == cost["parameters"]
        assert int(row["trainable_parameters"]) == cost["trainable_parameters"]
        assert float(row["train_images_per_s"]) == pytest.approx(cost["train_images_per_s"])
        # Every training image of the epoch was timed (28 of 40 images are training images).
        assert cost["train_images"] == 28
        by_job[tuple(sorted(o for o in row["overrides"].split() if o.startswith(SWEPT)))] = cost
    head = by_job[("model.backbone=resnet18", "model.trainable=head")]
    stage = by_job[("model.backbone=resnet18", "model.trainable=last_stage")]
    assert head["trainable_parameters"] == 512 * 2 + 2 and head["cached_features"] is True
    assert head["parameters"] == stage["parameters"] > stage["trainable_parameters"] > 8_000_000
    assert stage["cached_features"] is False
    mobile = by_job[("model.backbone=mobilenet_v3_large", "model.trainable=head")]
    assert mobile["trainable_parameters"] == 1280 * 2 + 2
    assert (sweep / FIGURE_FILE).is_file()
    assert len(collect_jobs(sweep)) == 4
