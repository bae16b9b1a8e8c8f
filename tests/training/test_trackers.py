"""Experiment trackers: MLflow and W&B runs hold the metrics, figures and best checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
    experiment, run = run_names("train", str(tmp_path / "run"))
    assert experiment == "train-sweep-2026-01-01_10-00-00_000001"
    assert run == "3: model.optimizer.lr=0.01"


@pytest.mark.slow
def test_mlflow_store_holds_params_metrics_figures_and_best_checkpoint(tiny_cfg, tmp_path) -> None:
    mlflow = pytest.importorskip("mlflow")
    cfg = tiny_cfg("logger=mlflow", f"paths.log_dir={tmp_path / 'logs'}")
    results = train(cfg)
    store = tmp_path / "logs" / "mlflow"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.data.params["model/optimizer/lr"] == str(cfg.model.optimizer.lr)
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
def test_wandb_offline_run_holds_config_metrics_figures_and_best_checkpoint(
    tiny_cfg, monkeypatch
) -> None:
    pytest.importorskip("wandb")
    from crackdet.training import train as train_module

    # An offline run keeps its summary and config only in W&B's binary log: read them from the
    # run just before it is finished.
    seen: dict = {}
    record = train_module.record_run_outputs

    def spy(loggers, results) -> None:
        for logger in loggers:
            run = logger.experiment
            finish = run.finish

            def finish_and_keep(*args, run=run, finish=finish, **kwargs):
                seen.update(summary=dict(run.summary), config=dict(run.config))
                return finish(*args, **kwargs)

            run.finish = finish_and_keep
        record(loggers, results)

    monkeypatch.setattr(train_module, "record_run_outputs", spy)
    cfg = tiny_cfg("logger=wandb")
    results = train(cfg)
    assert seen["summary"]["test/acc"] == pytest.approx(results["test"]["test/acc"])
    assert seen["summary"]["best_checkpoint"] == results["best_checkpoint"]
    assert "val/acc_best" in seen["summary"] and "train/loss" in seen["summary"]
    assert seen["config"]["model"]["optimizer"]["lr"] == cfg.model.optimizer.lr
    [run_dir] = (Path(results["output_dir"]) / "wandb").glob("offline-run-*")
    images = {p.parent.name + "/" + p.name.rsplit("_", 2)[0] for p in run_dir.rglob("*.png")}
    assert {"val/confusion_matrix", "val/misclassified", "test/confusion_matrix"} <= images
    assert (run_dir / "files" / "metrics.json").is_file()
