"""Sweeps and scale-out: multiruns and their summary, DDP processes, Optuna, submitit/SLURM."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from crackdet.cli.ddp_jobs import LAUNCHER_ENV, DistributedJobs
from crackdet.cli.sweeps import ranked
from crackdet.data.synthetic import make_synthetic_dataset
from tests.conftest import TINY, compose_cfg, run_entry


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def multirun(tmp_path: Path, cache: Path, *overrides: str, multirun_flag: bool = True):
    """Run `python train.py -m` on tiny data, everything written below tmp_path."""
    sweep_dir = tmp_path / "sweep"
    result = run_entry(
        "train.py",
        *(["-m"] if multirun_flag else []),
        *TINY,
        f"paths.cache_dir={cache}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    )
    return result, sweep_dir


def job_metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def hparams_of(run_dir: Path) -> dict[str, object]:
    """The hyperparameters TensorBoard's HParams view shows for a run."""
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))  # every event file of the run
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.number_value or v.string_value for k, v in info.hparams.items()}


@pytest.mark.slow
def test_learning_rate_multirun_writes_a_job_dir_each_and_a_ranked_summary(
    tmp_path, synthetic_cache
) -> None:
    # Through the submitit launcher's local variant: the path a SLURM sweep takes, on this machine
    # (the failing-job and Optuna tests below use Hydra's default launcher).
    result, sweep = multirun(
        tmp_path, synthetic_cache, "launcher=submitit_local", "model.optimizer.lr=1e-3,1e-2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [".submitit", "0", "1"]
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 2
    by_lr = {}
    for row in rows:
        lr = next(o for o in row["overrides"].split() if o.startswith("model.optimizer.lr="))
        by_lr[lr] = row
        metrics = job_metrics(Path(row["output_dir"]))
        assert row["status"] == "ok" and row["optimized_metric"] == "val/acc_best"
        assert float(row["value"]) == pytest.approx(metrics["fit"]["val/acc_best"])
        assert float(row["test/acc"]) == pytest.approx(metrics["test"]["test/acc"])
    assert set(by_lr) == {"model.optimizer.lr=0.001", "model.optimizer.lr=0.01"}
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert "summary.csv" in result.stdout  # the table printed at the end of the sweep
    # TensorBoard's HParams view tells the jobs apart by their learning rate.
    assert {hparams_of(sweep / job)["lr"] for job in ("0", "1")} == {1e-3, 1e-2}


@pytest.mark.slow
def test_failed_job_is_listed_and_the_other_jobs_still_run(tmp_path, synthetic_cache) -> None:
    result, sweep = multirun(tmp_path, synthetic_cache, "model.optimizer.lr=-1,1e-2")
    assert result.returncode != 0  # the sweep reports the failure...
    rows = read_csv(sweep / "summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("1", "ok"), ("0", "failed")]
    error = rows[1]["error"]
    assert "Error: " in error and "-1" in error and "\n" not in error  # the error's first line
    assert rows[1]["value"] == ""
    assert float(rows[0]["value"]) == job_metrics(sweep / "1")["fit"]["val/acc_best"]
    assert f"job 0 failed: {error}" in result.stdout


@pytest.mark.slow
def test_ddp_cpu_inside_a_multirun_counts_every_sample_once_and_writes_once(
    tmp_path, fresh_cache
) -> None:
    # 20 + 13 images: a val and a test split of 5, which 2 processes cannot share evenly.
    folder = make_synthetic_dataset(tmp_path / "images", n_per_class=20, size=48)
    for path in sorted((folder / "Positive").iterdir())[:7]:
        path.unlink()
    data = [f"data.data_dir={folder}", "data.synthetic=null"]
    cache = fresh_cache()
    cfg = compose_cfg(tmp_path / "compose", [*TINY, f"paths.cache_dir={cache}", *data])
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    n_val, n_test = len(datamodule.splits["val"]), len(datamodule.splits["test"])
    assert n_val % 2 == 1 and n_test % 2 == 1

    result, sweep = multirun(tmp_path, cache, "trainer=ddp_cpu", *data)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = job_metrics(sweep / "0")
    assert metrics["fit"]["val/samples"] == n_val
    assert metrics["test"]["test/samples"] == n_test
    predictions = read_csv(sweep / "0" / "predictions_test.csv")
    assert len({row["path"] for row in predictions}) == len(predictions) == n_test
    # One set of outputs: the child process reused the job's directory and wrote nothing itself.
    assert not (tmp_path / "logs").exists()  # no run directory of a child process
    assert sorted(p.name for p in sweep.iterdir()) == [
        "0",
        "accuracy_vs_speed.png",
        "multirun.yaml",
        "summary.csv",
    ]
    for name in (
        "metrics.json",
        "predictions_val.csv",
        "predictions_test.csv",
        "split_manifest.csv",
        ".hydra",
    ):
        assert len(list(tmp_path.rglob(name))) == 1, name
    assert len(list((sweep / "0" / "checkpoints").iterdir())) == 2  # best.ckpt, last.ckpt
    assert "[rank: 1]" not in result.stdout + result.stderr  # rank 1 logs warnings only


def test_each_job_of_a_sweep_can_start_ddp_processes_again(monkeypatch) -> None:
    from lightning.fabric.strategies.launchers import subprocess_script

    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    lightning_command = subprocess_script._hydra_subprocess_cmd
    callback = DistributedJobs()
    callback.on_job_start(config=OmegaConf.create({"trainer": {}}), task_function=multirun)
    assert subprocess_script._hydra_subprocess_cmd is not lightning_command
    # What Lightning's launcher leaves in the launching process of a DDP job:
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    callback.on_job_end(config=OmegaConf.create(), job_return=None)
    # Else the next job would believe its processes were started for it, and wait for them.
    assert not any(name in os.environ for name in LAUNCHER_ENV)
    assert subprocess_script._hydra_subprocess_cmd is lightning_command


def test_a_job_without_a_trainer_leaves_lightnings_ddp_command_alone() -> None:
    # predict.py and export.py start no DDP processes; this keeps them from importing Lightning.
    from lightning.fabric.strategies.launchers import subprocess_script

    lightning_command = subprocess_script._hydra_subprocess_cmd
    callback = DistributedJobs()
    callback.on_job_start(config=OmegaConf.create({"predict": {}}), task_function=multirun)
    assert subprocess_script._hydra_subprocess_cmd is lightning_command
    callback.on_job_end(config=OmegaConf.create(), job_return=None)
    assert subprocess_script._hydra_subprocess_cmd is lightning_command


@pytest.mark.slow
def test_optuna_search_reports_its_best_trial(tmp_path, synthetic_cache) -> None:
    result, sweep = multirun(
        tmp_path,
        synthetic_cache,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        multirun_flag=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [job_metrics(sweep / job)["fit"]["val/acc_best"] for job in ("0", "1")]
    assert best["best_value"] == pytest.approx(max(trials))
    assert set(best["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.dropout",
        "data/augmentation",
    }
    assert len(read_csv(sweep / "summary.csv")) == 2


def test_sweep_summary_ranks_best_first_and_failed_jobs_last() -> None:
    rows = [
        {"job": 0, "value": None},
        {"job": 1, "value": 0.7},
        {"job": 2, "value": 0.9},
        {"job": 3, "value": 0.7},
    ]
    assert [r["job"] for r in ranked(rows, maximize=True)] == [2, 1, 3, 0]
    assert [r["job"] for r in ranked(rows, maximize=False)] == [1, 3, 2, 0]


def test_slurm_launcher_config_asks_for_the_trainers_nodes_and_gpus(tmp_path, monkeypatch) -> None:
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = compose_cfg(
        tmp_path / "run",
        [
            "launcher=slurm",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=90",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
    )
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    # The sbatch script submitit would submit (a stand-in srun: there is no SLURM here).
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            k if k in shared else f"slurm_{k}": v
            for k, v in launcher.params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        }
    )
    sbatch = executor._executor._make_submission_file_text("python train.py", "uid")
    for line in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--time=90",
    ):
        assert f"#SBATCH {line}\n" in sbatch


def test_a_diverged_job_never_ranks_first() -> None:
    jobs = [
        {"job": 0, "value": float("nan")},
        {"job": 1, "value": 0.7},
        {"job": 2, "value": None},
        {"job": 3, "value": 0.9},
    ]
    assert [r["job"] for r in ranked(jobs)] == [3, 1, 0, 2]
    assert [r["job"] for r in ranked(jobs, maximize=False)] == [1, 3, 0, 2]


@pytest.mark.parametrize(
    "metric,maximize",
    [("val/acc_best", True), ("val/loss", False), ("test/ece", False), ("val/auroc", True)],
)
def test_summary_ranks_losses_lowest_first(metric: str, maximize: bool) -> None:
    from crackdet.cli.sweeps import SweepSummary

    assert (
        SweepSummary("auto")._maximized(OmegaConf.create({"optimized_metric": metric})) is maximize
    )
    assert SweepSummary("maximize")._maximized(OmegaConf.create({"optimized_metric": metric}))


def test_ties_are_broken_by_validation_loss_then_job_number() -> None:
    def job(number: int, value: float, loss: float | None) -> dict:
        metrics = {"val/loss": loss, "val/acc": value}
        return {
            "job": number,
            "value": value,
            "optimized_metric": "val/acc_best",
            "metrics": metrics,
        }

    jobs = [job(0, 0.9, 0.30), job(1, 0.9, 0.20), job(2, 0.95, 0.50), job(3, 0.9, None)]
    assert [r["job"] for r in ranked(jobs)] == [2, 1, 0, 3]
    # Optimizing the loss itself: equal losses are told apart by the higher accuracy.
    by_loss = [dict(r, optimized_metric="val/loss", value=0.3) for r in jobs[:2]]
    by_loss[0]["metrics"] = {"val/acc": 0.8}
    assert [r["job"] for r in ranked(by_loss, maximize=False)] == [1, 0]


def test_summary_table_never_cuts_a_jobs_overrides(monkeypatch, capsys) -> None:
    from crackdet.cli.sweeps import print_summary

    monkeypatch.setenv("COLUMNS", "60")
    long = "data/augmentation=strong_with_a_rather_long_option_name"
    rows = [
        {
            "job": n,
            "status": "ok",
            "overrides": ["experiment=smoke", f"model.optimizer.lr={lr}", f"{long}_{n}"],
            "optimized_metric": "val/acc_best",
            "value": 0.9 - n / 10,
            "metrics": {"val/acc": 0.9, "val/loss": 0.3, "test/acc": 0.9, "test/f1": 0.88},
        }
        for n, lr in enumerate(("0.001", "0.01"))
    ]
    print_summary(ranked(rows), "2 job(s), best first")
    shown = capsys.readouterr().out
    for text in (
        "model.optimizer.lr=0.001",
        "model.optimizer.lr=0.01",
        f"{long}_1",
        "val/acc_best",
    ):
        assert text in shown, text
    assert "…" not in shown
    assert "ties: val/loss (better first), then job number" in shown
