"""Experiment trackers: MLflow and W&B runs hold the metrics, figures and best checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from crackdet.extras import MissingExtraError
from crackdet.training.trackers import run_names
from crackdet.training.train import train
from tests.conftest import compose_cfg


def test_a_logger_whose_package_is_missing_names_the_extra(tiny_cfg, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        MissingExtraError, match=r'logger=mlflow needs .*pip install "crackdet\[mlflow\]"'
    ):
        train(tiny_cfg("logger=mlflow"))


def test_a_sweep_job_is_a_run_of_the_sweeps_experiment(tmp_path) -> None:
    compose_cfg(
        tmp_path / "run",
        [
            "model.optimizer.lr=0.01",
            "hydra.mode=MULTIRUN",
            "hydra.job.num=3",
            "hydra.sweep.dir=/x/multirun/2026-01-01_10-00-00_000001",
        ],
    )
    experiment, run = run_names("train")
    assert experiment == "train-sweep-2026-01-01_10-00-00_000001"
    assert run == "3: model.optimizer.lr=0.01"


@pytest.mark.slow
def test_mlflow_store_holds_params_metrics_figures_and_best_checkpoint(tiny_cfg, tmp_path) -> None:
    mlflow = pytest.importorskip("mlflow")
    results = train(tiny_cfg("logger=mlflow", f"paths.log_dir={tmp_path / 'logs'}"))
    store = tmp_path / "logs" / "mlflow"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.data.params["model/optimizer/lr"] == "0.001"
    for metric in ("train/loss", "val/acc", "val/acc_best", "test/acc", "test/auroc"):
        assert metric in run.data.metrics, metric
    assert run.data.metrics["test/acc"] == pytest.approx(results["test"]["test/acc"])
    assert run.data.tags["best_checkpoint"] == results["best_checkpoint"]
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    for tag in ("val_confusion_matrix", "val_misclassified", "test_confusion_matrix"):
        assert any(Path(f).name.startswith(tag) and f.endswith(".png") for f in figures), tag
    assert "metrics.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert str(store) in str(run.info.artifact_uri)  # under outputs/, not the working directory


@pytest.mark.slow
def test_wandb_offline_run_holds_config_metrics_figures_and_best_checkpoint(tiny_cfg) -> None:
    pytest.importorskip("wandb")
    results = train(tiny_cfg("logger=wandb"))
    [run_dir] = (Path(results["output_dir"]) / "wandb").glob("offline-run-*")
    files = run_dir / "files"
    summary = json.loads((files / "wandb-summary.json").read_text())
    assert summary["test/acc"] == pytest.approx(results["test"]["test/acc"])
    assert summary["best_checkpoint"] == results["best_checkpoint"]
    assert "val/acc_best" in summary
    config = yaml.safe_load((files / "config.yaml").read_text())
    assert config["model/optimizer/lr"]["value"] == 0.001
    images = {p.name.split("_")[0] for p in (files / "media" / "images").rglob("*.png")}
    assert images, "the confusion matrices and misclassified grids are logged as images"
    assert (files / "metrics.json").is_file()
