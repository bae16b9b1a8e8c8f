"""The evaluation job behind `python eval.py`: a checkpoint's metrics, predictions and figures."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from crackdet.data.classes import CLASS_NAMES
from crackdet.data.datamodule import CrackDataModule
from crackdet.data.manifest import list_digest, manifest_of_checkpoint, relative_path
from crackdet.deploy.inference import backbone_runner, recorded_data_settings
from crackdet.errors import ConfigError, DataError
from crackdet.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)
from crackdet.evaluation.curves import pr_curve_figure, reliability_figure, roc_curve_figure
from crackdet.evaluation.plots import confusion_matrix_figure
from crackdet.evaluation.predictions_file import PREDICTION_COLUMNS
from crackdet.evaluation.threshold import (
    DEFAULT_THRESHOLD,
    check_target_recall,
    decisions,
    stored_operating_point,
    threshold_for_recall,
    threshold_metrics,
)
from crackdet.io import write_csv, write_json
from crackdet.models.checkpoint import checkpoint_file, load_classifier
from crackdet.models.lightning_model import CrackClassifier
from crackdet.training.callbacks.outputs import EpochOutputs

log = logging.getLogger(__name__)

#: Values of eval's `data.split`: a part of the training run's split, or the whole folder.
EVAL_SPLITS = ("test", "val", "all")
#: Values of `eval.on_mismatch`: what to do with manifest images that are missing or changed.
ON_MISMATCH = ("error", "skip")
#: eval's `data.*` keys that default to the checkpoint's record (CrackDataModule hyperparameters).
_RECORDED = (
    "data_dir",
    "image_size",
    "batch_size",
    "train_fraction",
    "fractions",
    "split_seed",
    "mean",
    "std",
    "interpolation",
)

Predictions = dict[str, Any]  # the read_predictions layout: path, label, prob_crack (+ loss)


def data_settings(data: DictConfig, recorded: Mapping[str, Any], ckpt_path: str) -> dict[str, Any]:
    """CrackDataModule arguments: every null of eval's `data` taken from the checkpoint's record."""
    given = OmegaConf.to_container(data, resolve=True)
    subset = given.get("split")
    if subset is not None and subset not in EVAL_SPLITS:
        raise ConfigError(
            f"data.split={subset}: for eval.py it names the images to evaluate, one of "
            f"{list(EVAL_SPLITS)}; the training run's split mode is data.split_mode "
            "(seed|stratified)."
        )
    settings = {k: given[k] if given.get(k) is not None else recorded.get(k) for k in _RECORDED}
    if settings["data_dir"] is None:
        raise ConfigError(
            f"ckpt_path={ckpt_path} records no data settings; pass data.data_dir=<folder> "
            "data.split=all (plus data.image_size=<training size> if it was not 224, the default "
            "backbone's)."
        )
    classes = {**recorded.get("classes", {})}
    classes.update({k: v for k, v in (given.get("classes") or {}).items() if v is not None})
    mode = "all" if subset == "all" else given.get("split_mode") or recorded.get("split")
    settings.update(
        classes=classes or None,
        split=mode,
        num_workers=given.get("num_workers"),
        on_bad_image=given.get("on_bad_image"),
        cache_dir=given.get("cache_dir"),
    )
    # Left out, a setting takes CrackDataModule's default.
    return {k: v for k, v in settings.items() if v is not None}


class _Collector(EpochOutputs):
    """Keeps the (index, probability, label) of every sample of the last test epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def on_outputs(self, trainer, pl_module, stage, idx, probs, labels) -> None:
        """Remember this epoch's outputs."""
        self.outputs = (idx, probs, labels)


class _Predictor:
    """One model and trainer, run over any split of any data module."""

    def __init__(self, cfg: DictConfig, model: CrackClassifier):
        self.collector = _Collector()
        self.trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[self.collector])
        self.model = model
        self.runtime = (cfg.eval.get("backbone_runtime"), cfg.eval.get("backbone_precision"))
        self.cache_dir = cfg.data.get("cache_dir")

    def __call__(self, datamodule: CrackDataModule, split: str) -> Predictions:
        """p(crack) of every image of `split`, through the model's own test step."""
        if self.model.feature_fn is None:
            # The backbone runs on the configured runtime; the head in the test step.
            self.model.feature_fn = backbone_runner(
                self.model.backbone,
                self.model.hparams,
                *self.runtime,
                (datamodule.batch_size, datamodule.image_size),
                self.trainer.strategy.root_device,
                self.cache_dir,
            )
        loader = datamodule.test_dataloader() if split != "val" else datamodule.val_dataloader()
        logged = self.trainer.test(self.model, dataloaders=loader, verbose=False)[0]
        idx, probs, labels = self.collector.outputs
        paths = datamodule.datasets["val" if split == "val" else "test"].paths
        return {
            "path": [paths[i] for i in idx.tolist()],
            "label": labels.long(),
            "prob_crack": probs,
            "loss": float(logged["test/loss"]),
        }


def split_metrics(
    predictions: Predictions, prefix: str, threshold: float
) -> dict[str, float | int | None]:
    """Metrics at `threshold` and threshold-free ones, named `<prefix>/<metric>`."""
    probs, labels = predictions["prob_crack"], predictions["label"]
    metrics: dict[str, Any] = dict(threshold_metrics(probs, labels, threshold))
    both_classes = labels.unique().numel() == 2  # ranking metrics need both classes
    metrics["auroc"] = float(binary_auroc(probs, labels)) if both_classes else None
    metrics["average_precision"] = (
        float(binary_average_precision(probs, labels)) if both_classes else None
    )
    metrics["samples"] = len(labels)
    if "loss" in predictions:
        metrics["loss"] = predictions["loss"]
    return _prefixed(metrics, prefix)


def _prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def check_eval_dir(output_dir: Path) -> None:
    """Refuse to write into a directory that already holds an evaluation."""
    if (output_dir / "metrics.json").exists():
        raise ConfigError(
            f"{output_dir} already holds results (metrics.json); they are never overwritten. "
            "Leave hydra.run.dir unset for a fresh directory."
        )


class _Evaluation:
    """The data, predictions and operating point of one `eval.py` run."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        # A damaged or foreign checkpoint is refused before any data is read.
        model = load_classifier(cfg.get("ckpt_path"))
        self.ckpt_path = str(checkpoint_file(cfg.ckpt_path).resolve())
        self.target_recall = check_target_recall(cfg.eval.target_recall)
        self.on_mismatch = cfg.eval.get("on_mismatch", "error")
        if self.on_mismatch not in ON_MISMATCH:
            raise ConfigError(
                f"eval.on_mismatch={self.on_mismatch} must be one of {list(ON_MISMATCH)}."
            )
        self.recorded = recorded_data_settings(self.ckpt_path)
        self.settings = data_settings(cfg.data, self.recorded, self.ckpt_path)
        self.output_dir = Path(cfg.paths.output_dir)
        whole_folder = cfg.data.split == "all"
        self.manifest = None if whole_folder else manifest_of_checkpoint(self.ckpt_path)
        self.datamodule = CrackDataModule(
            **self.settings, output_dir=str(self.output_dir), manifest=self.manifest
        )
        self.datamodule.setup()
        self.split = cfg.data.split or self._default_split()
        if self.manifest is not None:
            self._check_manifest_split(self.datamodule, self.split)
            self._log_manifest()
        elif not whole_folder:
            log.warning(
                "%s holds no split manifest (it was trained before crackdet recorded one), so "
                "the %s split is rebuilt from the recorded settings (split mode, fractions, "
                "seed) on %s as it is now: if files were added, removed or changed since "
                "training, these are not the images the run held out.",
                self.ckpt_path,
                self.split,
                self.settings["data_dir"],
            )
        if not self.datamodule.has_split(self.split if self.split != "all" else "test"):
            raise DataError(
                f"The training run's split (data.split_mode={self.settings.get('split')}) has no "
                f"{self.split} images; evaluate data.split=val, or data.split=all for every image."
            )
        recorded_dir, data_dir = self.recorded.get("data_dir"), self.settings["data_dir"]
        if not whole_folder and recorded_dir and Path(recorded_dir) != Path(data_dir):
            log.warning(
                "Evaluating the training run's %s split on %s, not on the folder it was "
                "trained on (%s)%s; use data.split=all for a different data set.",
                self.split,
                data_dir,
                recorded_dir,
                " (images matched by relative path and fingerprint)" if self.manifest else "",
            )
        self.predict = _Predictor(cfg, model)
        self.predictions = self.predict(self.datamodule, self.split)
        self._val: Predictions | None = None

    def _default_split(self) -> str:
        if self.manifest is not None:
            return "test" if self.manifest.split("test") else "val"
        return "test" if self.datamodule.has_split("test") else "val"

    def _check_manifest_split(self, datamodule: CrackDataModule, split: str) -> None:
        """Refuse (or with eval.on_mismatch=skip, leave out) the manifest's changed images."""
        match, source = datamodule.manifest_match, datamodule.manifest.source
        total = len(datamodule.manifest.split(split))
        if match.problems(split):
            problem = (
                f"{match.problems(split)} of the {total} {split} images of the training run "
                f"(split manifest in {source}) are missing or changed in "
                f"{datamodule.data_dir}: {match.report(split)}."
            )
            if self.on_mismatch == "error":
                raise DataError(
                    f"{problem} Restore them, or evaluate the {len(match.splits[split])} "
                    "unchanged ones with eval.on_mismatch=skip."
                )
            log.warning("%s They are left out (eval.on_mismatch=skip).", problem)

    def _log_manifest(self) -> None:
        match = self.datamodule.manifest_match
        log.info(
            "Evaluating the %d %s images of the training run's split manifest (%s).",
            len(match.splits[self.split]),
            self.split,
            self.manifest.source,
        )
        if match.new:
            log.warning(
                "%s file(s) in %s are not in the training run's split manifest and are not "
                "evaluated (data.split=all evaluates the whole folder): %s",
                len(match.new),
                self.datamodule.data_dir,
                match.new_report(),
            )

    def images(self) -> dict[str, Any]:
        """Which images were evaluated: where their list came from, counts and a digest."""
        name = "test" if self.split == "all" else self.split
        records = self.datamodule.datasets[name].records
        data_dir = self.datamodule.data_dir
        summary: dict[str, Any] = {
            "split": self.split,
            "evaluated": len(records),
            "digest": list_digest((relative_path(r.path, data_dir), r.digest) for r in records),
        }
        if self.manifest is None:
            summary["source"] = (
                "the whole folder (data.split=all)"
                if self.split == "all"
                else "rebuilt from the recorded split settings (no manifest in the checkpoint)"
            )
            return summary
        match = self.datamodule.manifest_match
        summary.update(
            source="split manifest",
            manifest=self.manifest.source,
            in_manifest=len(self.manifest.split(self.split)),
            manifest_digest=self.manifest.digest(self.split),
            missing=len(match.missing[self.split]),
            changed=len(match.changed[self.split]),
            not_in_manifest=len(match.new),
        )
        return summary

    def validation_predictions(self, reason: str) -> Predictions | None:
        """Predictions on the training run's validation split, or None when it cannot be rebuilt."""
        if self.split == "val":
            return self.predictions
        if self._val is not None:
            return self._val
        datamodule = self.datamodule
        if self.split == "all":
            # The evaluated folder is other data: the validation split is the training run's own.
            given = OmegaConf.masked_copy(
                self.cfg.data, ["num_workers", "batch_size", "cache_dir", "on_bad_image"]
            )
            manifest = manifest_of_checkpoint(self.ckpt_path)
            try:
                datamodule = CrackDataModule(
                    **data_settings(given, self.recorded, self.ckpt_path), manifest=manifest
                )
                datamodule.setup()
                if manifest is not None:
                    self._check_manifest_split(datamodule, "val")
            except (DataError, ConfigError) as exc:
                log.warning(
                    "Cannot rebuild the training run's validation split for %s: %s", reason, exc
                )
                return None
        elif self.manifest is not None:
            self._check_manifest_split(datamodule, "val")
        if not datamodule.has_split("val"):
            log.warning("The training run's split has no validation images for %s.", reason)
            return None
        log.info("Predicting the validation split for %s.", reason)
        self._val = self.predict(datamodule, "val")
        return self._val

    def operating_point(self) -> dict[str, Any] | None:
        """The threshold to report next to 0.5: given, stored in the checkpoint, or chosen here."""
        if self.cfg.eval.threshold is not None:
            threshold = float(self.cfg.eval.threshold)
            if not 0 <= threshold <= 1:
                raise ConfigError(f"eval.threshold={threshold} must lie in [0, 1].")
            return {"threshold": threshold, "target_recall": None, "source": "eval.threshold"}
        stored = stored_operating_point(self.ckpt_path)
        if stored and math.isclose(stored["target_recall"], self.target_recall):
            return {**stored, "source": "checkpoint (chosen on the validation split in training)"}
        val = self.validation_predictions(f"a threshold at recall {self.target_recall}")
        if val is None or not bool((val["label"] == 1).any()):
            log.warning(
                "No operating point: metrics are reported at %s only. Set "
                "eval.threshold=<t> to report another threshold.",
                DEFAULT_THRESHOLD,
            )
            return None
        threshold = threshold_for_recall(val["prob_crack"], val["label"], self.target_recall)
        return {
            "threshold": threshold,
            "target_recall": self.target_recall,
            "source": "validation split",
        }

    def calibration(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """ECE (and with temperature scaling, the fitted T and ECE after it); curves to plot."""
        bins = int(self.cfg.eval.calibration_bins)
        probs, labels = self.predictions["prob_crack"], self.predictions["label"]
        result: dict[str, Any] = {
            "bins": bins,
            f"{self.split}/ece": expected_calibration_error(probs, labels, bins),
        }
        curves = {"model": probs}
        if not self.cfg.eval.temperature_scaling:
            return result, curves
        val = self.validation_predictions("temperature scaling")
        if val is None:
            raise ConfigError(
                "eval.temperature_scaling=true needs the training run's validation "
                "split (see the warning above); set it to false."
            )
        if self.split == "val":
            log.warning(
                "eval.temperature_scaling: the temperature is fitted on the validation "
                "split it is judged on, so val/ece_scaled is optimistic; judge it on "
                "data.split=test."
            )
        temperature = fit_temperature(val["prob_crack"], val["label"])
        scaled = apply_temperature(probs, temperature)
        result.update(
            {
                "temperature": temperature,
                f"{self.split}/ece_scaled": expected_calibration_error(scaled, labels, bins),
                "val/ece": expected_calibration_error(val["prob_crack"], val["label"], bins),
                "val/ece_scaled": expected_calibration_error(
                    apply_temperature(val["prob_crack"], temperature), val["label"], bins
                ),
            }
        )
        curves[f"temperature {temperature:.3g}"] = scaled
        return result, curves


def _save_figure(fig: Figure, path: Path, tensorboard: Any, tag: str) -> None:
    """Write a figure as PNG and the same image to TensorBoard (drawn once), then free it."""
    fig.savefig(path, dpi=100)
    plt.close(fig)
    with Image.open(path) as image:
        tensorboard.add_image(tag, np.asarray(image.convert("RGB")), dataformats="HWC")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path`: metrics.json, predictions.csv, figures and TensorBoard scalars."""
    output_dir = Path(cfg.paths.output_dir)
    check_eval_dir(output_dir)
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if devices not in (1, "1") or nodes != 1:
        raise ConfigError(
            f"eval.py runs in one process, but trainer.devices={devices} "
            f"trainer.num_nodes={nodes}: use trainer.devices=1 trainer.num_nodes=1."
        )
    run = _Evaluation(cfg)
    split, predictions = run.split, run.predictions
    probs, labels = predictions["prob_crack"], predictions["label"]
    point = run.operating_point()
    if point:
        point["metrics"] = _prefixed(threshold_metrics(probs, labels, point["threshold"]), split)
    calibration, curves = run.calibration()

    results: dict[str, Any] = {
        "ckpt_path": run.ckpt_path,
        "split": split,
        "data": {("split_mode" if k == "split" else k): v for k, v in run.settings.items()},
        "samples": len(labels),
        "images": run.images(),
        "metrics": split_metrics(predictions, split, DEFAULT_THRESHOLD),
        "operating_point": point,
        "calibration": calibration,
        "output_dir": str(output_dir),
    }
    write_csv(
        output_dir / "predictions.csv",
        PREDICTION_COLUMNS,
        zip(
            predictions["path"],
            labels.tolist(),
            (f"{p:.6f}" for p in probs.tolist()),
            decisions(probs, DEFAULT_THRESHOLD).tolist(),
            strict=True,
        ),
    )
    write_json(output_dir / "metrics.json", results)
    _write_figures_and_scalars(results, probs, labels, curves, output_dir)
    _log_summary(results)
    return results


def points_of(point: dict[str, Any] | None) -> dict[str, float]:
    """The thresholds figures mark: the 0.5 default and, when there is one, the operating point."""
    points = {"default": DEFAULT_THRESHOLD}
    if point:
        points["operating point"] = point["threshold"]
    return points


def _write_figures_and_scalars(
    results: dict[str, Any],
    probs: torch.Tensor,
    labels: torch.Tensor,
    curves: dict[str, torch.Tensor],
    output_dir: Path,
) -> None:
    split, point = results["split"], results["operating_point"]
    # Every figure names the data set and split it shows, and the threshold(s) it judges at.
    where = f"{Path(results['data']['data_dir']).name}, {split} split"
    marked = ", ".join(f"{name} t={t:.4g}" for name, t in points_of(point).items())
    logger = TensorBoardLogger(
        save_dir=output_dir, name="tensorboard", version="", default_hp_metric=False
    )
    writer = logger.experiment
    scalars = {k: v for k, v in results["metrics"].items() if v is not None}
    points = points_of(point)
    if point:
        scalars.update(
            {k.replace("/", "/op_", 1): v for k, v in point["metrics"].items() if v is not None}
        )
        m = point["metrics"]
        counts = [[m[f"{split}/tn"], m[f"{split}/fp"]], [m[f"{split}/fn"], m[f"{split}/tp"]]]
        title = (
            f"{where}: {len(labels)} images\nthreshold {point['threshold']:.4g} "
            f"(operating point: {point['source']})"
        )
        _save_figure(
            confusion_matrix_figure(counts, CLASS_NAMES, title),
            output_dir / "confusion_matrix_operating_point.png",
            writer,
            f"{split}/confusion_matrix_op",
        )
    scalars.update({k: v for k, v in results["calibration"].items() if k != "bins"})
    m = results["metrics"]
    counts = [[m[f"{split}/tn"], m[f"{split}/fp"]], [m[f"{split}/fn"], m[f"{split}/tp"]]]
    _save_figure(
        confusion_matrix_figure(
            counts,
            CLASS_NAMES,
            f"{where}: {len(labels)} images\nthreshold {DEFAULT_THRESHOLD} (default)",
        ),
        output_dir / "confusion_matrix.png",
        writer,
        f"{split}/confusion_matrix",
    )
    _save_figure(
        reliability_figure(
            curves,
            labels,
            results["calibration"]["bins"],
            title=f"{where}: reliability\n(every threshold: no decision)",
        ),
        output_dir / "reliability.png",
        writer,
        f"{split}/reliability",
    )
    if labels.unique().numel() == 2:
        _save_figure(
            pr_curve_figure(
                probs, labels, points, title=f"{where}: precision-recall\nmarked: {marked}"
            ),
            output_dir / "pr_curve.png",
            writer,
            f"{split}/pr_curve",
        )
        _save_figure(
            roc_curve_figure(probs, labels, points, title=f"{where}: ROC\nmarked: {marked}"),
            output_dir / "roc_curve.png",
            writer,
            f"{split}/roc_curve",
        )
        writer.add_pr_curve(f"{split}/pr", labels, probs)
    logger.log_metrics(scalars)
    logger.finalize("success")


def _log_summary(results: dict[str, Any]) -> None:
    split = results["split"]
    sections = [("t=0.5", results["metrics"])]
    if results["operating_point"]:
        sections.append(
            (
                f"t={results['operating_point']['threshold']:.4g}",
                results["operating_point"]["metrics"],
            )
        )
    for name, m in sections:
        log.info(
            "%s %s: acc %.4f  precision %.4f  recall %.4f  specificity %.4f  "
            "missed cracks %d  false alarms %d",
            split,
            name,
            m[f"{split}/acc"],
            m[f"{split}/precision"],
            m[f"{split}/recall"],
            m[f"{split}/specificity"],
            m[f"{split}/fn"],
            m[f"{split}/fp"],
        )
    log.info("Results in %s", results["output_dir"])
