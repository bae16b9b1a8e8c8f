"""The training job behind `python train.py`: build everything from the config, fit, test, report."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from crackdet.cli.config import run_settings
from crackdet.cli.console import quiet_known_noise, report_end_of_run
from crackdet.cli.sweeps import log_final_hparams
from crackdet.cli.validation import validate_train_config
from crackdet.errors import ConfigError
from crackdet.evaluation.threshold import stored_operating_point
from crackdet.extras import check_logger_extras
from crackdet.io import write_json
from crackdet.models.checkpoint import check_resumable
from crackdet.training.callbacks.cost import training_cost
from crackdet.training.trackers import record_run_outputs

log = logging.getLogger(__name__)

# The frozen backbone is in eval mode on purpose (BatchNorm statistics must not drift).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")


#: The entry of conf/callbacks/ whose checkpoint is "the best": tested after fit, in metrics.json.
BEST_CHECKPOINT_CALLBACK = "model_checkpoint"


def _instantiate_all(section: DictConfig | None) -> dict[str, Any]:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    if not section:
        return {}
    return {name: instantiate(cfg) for name, cfg in section.items() if cfg and "_target_" in cfg}


def best_checkpoint(callbacks: dict[str, Any]) -> str | None:
    """The path of the best checkpoint so far, from the `model_checkpoint` callback, if any."""
    checkpoint = callbacks.get(BEST_CHECKPOINT_CALLBACK)
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, ModelCheckpoint):
        raise ConfigError(
            f"callbacks.{BEST_CHECKPOINT_CALLBACK} must be a lightning ModelCheckpoint, got "
            f"{type(checkpoint).__name__}; restore it from conf/callbacks/model_checkpoint.yaml."
        )
    return checkpoint.best_model_path or None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v.item() if isinstance(v, torch.Tensor) else v)
        for k, v in sorted(metrics.items())
        if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
    }


def check_output_dir(output_dir: Path, ckpt_path: str | None) -> None:
    """Refuse to train into a directory that already holds another run's checkpoints."""
    ckpt_dir = output_dir / "checkpoints"
    existing = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    resuming_here = ckpt_path is not None and Path(ckpt_path).resolve().parent == ckpt_dir.resolve()
    if existing and not resuming_here:
        raise ConfigError(
            f"{output_dir} already holds a training run ({existing[0].name}); it is never "
            "overwritten. Leave hydra.run.dir unset for a fresh directory, or resume that run "
            f"with ckpt_path={ckpt_dir / 'last.ckpt'}."
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the model, test the best checkpoint when a test split exists, write metrics.json."""
    quiet_known_noise()
    validate_train_config(cfg)
    check_logger_extras(cfg.get("logger"))
    output_dir = Path(cfg.paths.output_dir)
    check_output_dir(output_dir, cfg.get("ckpt_path"))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    if cfg.get("ckpt_path"):
        # Before the trainer starts: Lightning would fail on a bad file with a traceback.
        check_resumable(cfg.ckpt_path, model, resume=cfg.get("train", True))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers: list[Logger] = list(_instantiate_all(cfg.get("logger")).values())
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=list(callbacks.values()), logger=loggers or False
    )

    hparams = run_settings(cfg)
    for logger in loggers:
        logger.log_hyperparams(hparams)

    results: dict[str, Any] = {"output_dir": str(output_dir)}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        results["fit"] = _scalars(trainer.callback_metrics)
        results["cost"] = training_cost(trainer)
        best = best_checkpoint(callbacks)
        results["best_checkpoint"] = best
        if best:
            # Chosen by the OperatingPoint callback on the best weights' validation predictions.
            results["operating_point"] = stored_operating_point(best)
        if best and trainer.current_epoch > 1:
            # More than one epoch ran: report validation of the best weights, not the last.
            results["validate"] = _scalars(
                trainer.validate(model, datamodule=datamodule, ckpt_path=best)[0]
            )

    if cfg.get("test", True):
        # Idempotent; under ddp_spawn only the spawned processes have set the data up so far.
        datamodule.setup("test")
    if cfg.get("test", True) and datamodule.has_split("test"):
        # After fit: the best checkpoint, or (without one) the weights just trained; never the
        # checkpoint the fit resumed from.
        trained = cfg.get("train", True)
        ckpt = (results.get("best_checkpoint") or None) if trained else cfg.get("ckpt_path")
        results["test"] = _scalars(trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)[0])

    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", results)
    # With the final metrics, so TensorBoard's HParams view can compare the runs of a sweep.
    log_final_hparams(loggers, cfg, results)
    if trainer.is_global_zero:
        record_run_outputs(loggers, results)
        report_end_of_run(
            output_dir, results.get("best_checkpoint"), loggers, _view_dir(output_dir)
        )
    return results


def _view_dir(output_dir: Path) -> Path:
    """The folder to open in a viewer: the whole sweep for a multirun job, else the run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir)
    return output_dir


def metric_value(results: dict[str, Any], name: str | None) -> float | None:
    """Look `name` (e.g. "val/acc_best") up in the results of every stage that ran."""
    if not name:
        return None
    for stage in ("test", "validate", "fit"):
        if name in results.get(stage, {}):
            return results[stage][name]
    raise ConfigError(
        f"optimized_metric={name} was not logged; metrics available: "
        f"{sorted({k for s in ('fit', 'validate', 'test') for k in results.get(s, {})})}."
    )
