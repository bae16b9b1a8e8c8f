"""Experiment trackers beside TensorBoard: MLflow and W&B loggers, figures and the run's outputs.

The loggers are built by factories (`logger=mlflow`, `logger=wandb`) that name the experiment
after the sweep, so a multirun is one MLflow experiment (one W&B group) with a run per job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from crackdet.extras import require


def run_names(task_name: str, run_dir: str) -> tuple[str, str]:
    """(experiment or group, run) names: a sweep's own name and its job, else the task and run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra = HydraConfig.get()
        job = " ".join(hydra.overrides.task) or "defaults"
        return f"{task_name}-sweep-{Path(hydra.sweep.dir).name}", f"{hydra.job.num}: {job}"
    return task_name, Path(run_dir).name


class LocalMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that remembers its tracking URI (for the `mlflow ui` command)."""

    def __init__(self, tracking_uri: str, **kwargs: Any) -> None:
        super().__init__(tracking_uri=tracking_uri, **kwargs)
        self.tracking_uri = tracking_uri


def mlflow_logger(
    store_dir: str, task_name: str, run_dir: str, tracking_uri: str | None = None, **kwargs: Any
) -> MLFlowLogger:
    """Lightning's MLFlowLogger on a local SQLite store in `store_dir` (or on `tracking_uri`)."""
    require("mlflow", "mlflow", "logger=mlflow")
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    experiment, run = run_names(task_name, run_dir)
    return LocalMLFlowLogger(
        experiment_name=experiment,
        run_name=run,
        tracking_uri=tracking_uri or f"sqlite:///{store / 'mlflow.db'}",
        artifact_location=str(store / "artifacts"),
        **kwargs,
    )


def wandb_logger(save_dir: str, task_name: str, **kwargs: Any) -> WandbLogger:
    """Lightning's WandbLogger, its files in the run directory, sweeps grouped by their name."""
    require("wandb", "wandb", "logger=wandb")
    group, run = run_names(task_name, save_dir)
    return WandbLogger(save_dir=save_dir, name=run, group=group, **kwargs)


def log_image(loggers: Iterable[Logger], tag: str, image: Any, step: int) -> None:
    """Send a uint8 (3, H, W) image to every logger that keeps images (TensorBoard, MLflow, W&B)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, global_step=step)
        elif isinstance(logger, MLFlowLogger):
            # An artifact per step, like TensorBoard's image slider.
            name = f"figures/{tag.replace('/', '_')}_step{step:06d}.png"
            logger.experiment.log_image(logger.run_id, image.permute(1, 2, 0).numpy(), name)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image.permute(1, 2, 0).numpy()], step=step)


def log_text(loggers: Iterable[Logger], tag: str, text: str, step: int) -> None:
    """Send a Markdown text to the loggers that keep texts (TensorBoard; MLflow as an artifact)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, text, global_step=step)
        elif isinstance(logger, MLFlowLogger):
            name = f"figures/{tag.replace('/', '_')}_step{step:06d}.md"
            logger.experiment.log_text(logger.run_id, text, name)


def keeps_figures(loggers: Iterable[Logger]) -> bool:
    """True when one of the loggers stores figures."""
    return any(isinstance(x, (TensorBoardLogger, MLFlowLogger, WandbLogger)) for x in loggers)


def record_run_outputs(loggers: Iterable[Logger], results: Mapping[str, Any]) -> None:
    """Give MLflow / W&B the best checkpoint's path and metrics.json; close W&B's run.

    W&B keeps one run per process: without finishing it the next job of a multirun would
    write into this job's run.
    """
    best = results.get("best_checkpoint")
    metrics_file = Path(str(results.get("output_dir", ""))) / "metrics.json"
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            if best:
                logger.experiment.set_tag(logger.run_id, "best_checkpoint", str(best))
            if metrics_file.is_file():
                logger.experiment.log_artifact(logger.run_id, str(metrics_file))
        elif isinstance(logger, WandbLogger):
            if best:
                logger.experiment.summary["best_checkpoint"] = str(best)
            if metrics_file.is_file():
                logger.experiment.save(str(metrics_file), base_path=str(metrics_file.parent))
            logger.experiment.finish()
