"""Start-up checks of a training config: a mistake is reported before any data is read.

`validate_train_config(cfg)` runs first in `train()` and raises on the first mistake a
ConfigError (DataError, WeightsError for the data folder and weights file) naming the setting
and the fix; `run_main` turns it into a message and exit status 2. Checks that live beside the
code using a setting are reused from there (data folder, data.fractions, model.weights, the
target recall). The data module and the model check their own remaining settings
(data.batch_size, data.image_size, data.split, model.dropout, model.bn_mode, ...) when they are
built, which `train()` does next, before it reads any data or builds the network.

Misspelt keys and unknown config group options never get this far: Hydra's struct mode rejects
them while composing the config, naming the key or listing the available options.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from crackdet.cli.run import run_main
from crackdet.data.scan import check_data_dir
from crackdet.data.splits import check_fractions
from crackdet.errors import ConfigError, write_failure_reason
from crackdet.evaluation.threshold import check_target_recall
from crackdet.models.backbone import DEFAULT_BACKBONE, resolve_weights
from crackdet.models.trainable import check_trainable


def _is_number(value: Any, integer: bool = False) -> bool:
    kinds = int if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _require(condition: bool, setting: str, value: Any, rule: str) -> None:
    if not condition:
        raise ConfigError(f"{setting}={value} {rule}")


def check_writable_dir(path: str | Path, setting: str, fix: str) -> Path:
    """`path` is a writable folder or can be created as one; nothing is left behind."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(existing))
        # Making (and removing) a folder there is what creating the run's folders will need.
        with tempfile.TemporaryDirectory(dir=existing, prefix=".crackdet-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{setting}={path} cannot be written: {write_failure_reason(exc)}. Fix: {fix}"
        ) from exc
    return path


def _run_dir_fix(cfg: DictConfig) -> str:
    log_dir = OmegaConf.select(cfg, "paths.log_dir", default="outputs")
    return (
        f"runs are written below paths.log_dir={log_dir} unless hydra.run.dir is set; point "
        "paths.log_dir (or hydra.run.dir) at a writable folder with free space, e.g. "
        "paths.log_dir=$HOME/crackdet-outputs."
    )


def _check_outputs(cfg: DictConfig) -> None:
    check_writable_dir(cfg.paths.output_dir, "hydra.run.dir", _run_dir_fix(cfg))
    cache_dir = cfg.paths.get("cache_dir")
    if cache_dir:
        check_writable_dir(
            cache_dir,
            "paths.cache_dir",
            "point paths.cache_dir at a writable folder (it holds scan results, synthetic "
            "images and cached features).",
        )


def _check_data(data: DictConfig) -> None:
    synthetic = data.get("synthetic")
    if synthetic:
        n = synthetic.get("n_per_class")
        _require(
            _is_number(n, integer=True) and n >= 1,
            "data.synthetic.n_per_class",
            n,
            "must be a positive integer, e.g. data.synthetic.n_per_class=200.",
        )
    else:
        check_data_dir(data.data_dir, data.classes)
    check_fractions(data.get("fractions", [0.7, 0.15, 0.15]))
    for key in ("mean", "std"):
        values = data.get(key)
        _require(
            isinstance(values, Sequence) and len(values) == 3 and all(map(_is_number, values)),
            f"data.{key}",
            values,
            "must be three numbers, one per RGB channel.",
        )
    _require(
        all(s > 0 for s in data.std),
        "data.std",
        data.std,
        "must be above 0 in every channel (images are divided by it).",
    )


def _check_model(model: DictConfig) -> None:
    # Before the data settings: their defaults are read from this backbone's weights.
    resolve_weights(model.get("weights"), model.get("backbone", DEFAULT_BACKBONE))
    check_trainable(model.get("trainable", "head"))
    backbone_lr = model.get("backbone_lr")
    if backbone_lr is not None:
        _require(
            _is_number(backbone_lr) and backbone_lr > 0,
            "model.backbone_lr",
            backbone_lr,
            "must be a number above 0 (or null for the optimizer's lr), e.g. 1e-4.",
        )
    num_classes = model.get("num_classes", 2)
    _require(
        num_classes == 2,
        "model.num_classes",
        num_classes,
        "must be 2: the labels are crack (1) and no crack (0).",
    )
    optimizer = model.get("optimizer") or {}
    lr = optimizer.get("lr")
    if lr is not None:
        _require(
            _is_number(lr) and lr > 0,
            "model.optimizer.lr",
            lr,
            "must be a number above 0, e.g. model.optimizer.lr=1e-3.",
        )
    weight_decay = optimizer.get("weight_decay")
    if weight_decay is not None:
        _require(
            _is_number(weight_decay) and weight_decay >= 0,
            "model.optimizer.weight_decay",
            weight_decay,
            "must be a number, 0 or more.",
        )


def _check_trainer(trainer: DictConfig) -> None:
    max_epochs, min_epochs = trainer.get("max_epochs"), trainer.get("min_epochs")
    max_steps = trainer.get("max_steps")
    if not (max_epochs in (None, -1) and _is_number(max_steps, integer=True) and max_steps > 0):
        # Without a step budget, the epochs are the budget.
        _require(
            _is_number(max_epochs, integer=True) and max_epochs >= 1,
            "trainer.max_epochs",
            max_epochs,
            "must be an integer, 1 or more, e.g. trainer.max_epochs=10.",
        )
    if min_epochs is not None:
        _require(
            _is_number(min_epochs, integer=True) and min_epochs >= 0,
            "trainer.min_epochs",
            min_epochs,
            "must be an integer, 0 or more.",
        )
        if _is_number(max_epochs, integer=True) and max_epochs >= 1:
            _require(
                min_epochs <= max_epochs,
                "trainer.min_epochs",
                min_epochs,
                f"must not exceed trainer.max_epochs={max_epochs}.",
            )


def _check_run(cfg: DictConfig) -> None:
    seed = cfg.get("seed")
    _require(
        seed is None or _is_number(seed, integer=True),
        "seed",
        seed,
        "must be an integer, or null for a random seed.",
    )
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:
        _require(
            Path(str(ckpt_path)).expanduser().is_file(),
            "ckpt_path",
            ckpt_path,
            "is not a file. Give a checkpoint of a training run, e.g. "
            "ckpt_path=outputs/train/<run>/checkpoints/last.ckpt, or ckpt_path=null.",
        )
    if not cfg.get("train", True) and cfg.get("test", True) and ckpt_path is None:
        raise ConfigError(
            "train=false tests a trained model, but ckpt_path is not set: give "
            "ckpt_path=outputs/train/<run>/checkpoints/best.ckpt (or evaluate it with eval.py)."
        )
    if cfg.get("train", True) and OmegaConf.select(cfg, "data.split") == "all":
        raise ConfigError(
            "data.split=all puts every image in the test split, leaving nothing to train on: "
            "use data.split=seed or stratified for training, and data.split=all with eval.py."
        )
    operating_point = OmegaConf.select(cfg, "callbacks.operating_point")
    if operating_point and "target_recall" in operating_point:
        recall = operating_point.target_recall
        _require(
            _is_number(recall),
            "callbacks.operating_point.target_recall",
            recall,
            "must be a number in (0, 1], e.g. 0.99.",
        )
        check_target_recall(
            operating_point.target_recall, "callbacks.operating_point.target_recall"
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Check the settings of a training config before any work starts; raise on the first mistake."""
    _check_outputs(cfg)
    _check_run(cfg)
    _check_model(cfg.model)
    _check_data(cfg.data)
    _check_trainer(cfg.trainer)


class OutputDirCheck(Callback):
    """Hydra callback: the run or sweep folder must be creatable, checked before Hydra makes it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check hydra.run.dir."""
        run_main(
            lambda cfg: check_writable_dir(cfg.hydra.run.dir, "hydra.run.dir", _run_dir_fix(cfg)),
            config,
        )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check hydra.sweep.dir."""
        run_main(
            lambda cfg: check_writable_dir(
                cfg.hydra.sweep.dir, "hydra.sweep.dir", _run_dir_fix(cfg)
            ),
            config,
        )
