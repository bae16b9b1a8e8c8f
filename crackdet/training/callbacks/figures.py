"""TensorBoard images of evaluation epochs: confusion matrix and the most confident mistakes.

Drawn with Pillow and torchvision (milliseconds, see `tensorboard_images`), when the user
chooses: every N-th validation epoch and/or once when fitting ends; validation of a checkpoint
and the test split are drawn whenever they run. Each image states the data set, the split and
the threshold it judges at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics.functional.classification import binary_confusion_matrix

from crackdet.data.classes import CLASS_NAMES
from crackdet.data.transforms import denormalize
from crackdet.errors import ConfigError
from crackdet.evaluation.mistakes import most_confident_mistakes
from crackdet.evaluation.tensorboard_images import captioned_grid, confusion_matrix_image
from crackdet.evaluation.threshold import DEFAULT_THRESHOLD
from crackdet.training.callbacks.outputs import EpochOutputs
from crackdet.training.trackers import keeps_figures, log_image, log_text

#: Characters of a file name that fit under a grid cell.
_NAME_CHARS = 20


def threshold_label(threshold: float) -> str:
    """How a figure names its threshold: the 0.5 default or a fixed value, never the op. point."""
    if threshold == DEFAULT_THRESHOLD:
        return f"threshold {threshold:g} (default; not the stored operating point)"
    return f"threshold {threshold:g} (callbacks.evaluation_figures.threshold)"


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 3] + "..."


class EvaluationFigures(EpochOutputs):
    """Logs `<stage>/confusion_matrix` and `<stage>/misclassified` images (TensorBoard, MLflow, W&B).

    `every_n_epochs`: draw every N-th validation epoch of a fit (0: none during the fit);
    `at_end`: when the fit ends, draw its last validation epoch if it was not drawn already.
    """

    def __init__(
        self,
        max_images: int = 16,
        threshold: float = DEFAULT_THRESHOLD,
        every_n_epochs: int = 1,
        at_end: bool = True,
    ):
        super().__init__()
        if (
            not isinstance(every_n_epochs, int)
            or isinstance(every_n_epochs, bool)
            or (every_n_epochs < 0)
        ):
            raise ConfigError(
                f"callbacks.evaluation_figures.every_n_epochs={every_n_epochs} must be an "
                "integer >= 0 (1: every validation epoch, 0: only at the end with at_end=true)."
            )
        self.max_images = max_images
        self.threshold = threshold
        self.every_n_epochs = every_n_epochs
        self.at_end = bool(at_end)
        self._undrawn: tuple[Any, ...] | None = None

    def on_outputs(self, trainer, pl_module, stage, idx, probs, labels) -> None:
        """Draw this epoch's images now, keep them for the end of the fit, or skip them."""
        epoch = trainer.current_epoch
        if stage == "val" and trainer.state.fn == TrainerFn.FITTING:
            n = self.every_n_epochs
            if not n or (epoch + 1) % n:
                self._undrawn = (stage, epoch, trainer.global_step, idx, probs, labels)
                return
            self._undrawn = None
            when = f"epoch {epoch}"
        else:
            when = f"checkpoint {Path(trainer.ckpt_path).name}" if trainer.ckpt_path else "end"
        self.draw(trainer, stage, when, trainer.global_step, idx, probs, labels)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the fit's last validation epoch if the schedule skipped it and `at_end` is set."""
        if self._undrawn is not None and self.at_end:
            stage, epoch, step, idx, probs, labels = self._undrawn
            self.draw(trainer, stage, f"epoch {epoch} (last)", step, idx, probs, labels)
        self._undrawn = None

    def draw(
        self,
        trainer: L.Trainer,
        stage: str,
        when: str,
        step: int,
        idx: torch.Tensor,
        probs: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        """Add both images of one evaluation epoch to the loggers at `step`."""
        if not keeps_figures(trainer.loggers) or not len(idx):
            return
        datamodule = trainer.datamodule
        data = Path(datamodule.data_dir).name
        judged = threshold_label(self.threshold)
        counts = binary_confusion_matrix(probs, labels, threshold=self.threshold)
        title = [f"{stage} split of {data}: {len(idx)} images, {when}", judged]
        image = confusion_matrix_image(counts, CLASS_NAMES, title)
        log_image(trainer.loggers, f"{stage}/confusion_matrix", image, step)

        chosen = most_confident_mistakes(probs, labels, self.max_images, self.threshold)
        if not len(chosen):
            return
        dataset = datamodule.datasets[stage]
        images, captions, rows = [], [], []
        for position in chosen.tolist():
            sample = int(idx[position])
            path = dataset.records[sample].path
            truth, p = CLASS_NAMES[int(labels[position])], float(probs[position])
            images.append(denormalize(dataset[sample][0], datamodule.mean, datamodule.std))
            captions.append([_short(Path(path).name), f"true {truth}", f"p(crack)={p:.3f}"])
            rows.append(f"| {path} | {truth} | {p:.4f} |")
        title = [
            f"{stage} split of {data}: the {len(chosen)} most confident mistakes, {when}",
            judged,
        ]
        grid = captioned_grid(images, captions, title)
        log_image(trainer.loggers, f"{stage}/misclassified", grid, step)
        table = "\n".join(
            [
                f"{title[0]}; {judged}; data set {datamodule.data_dir}",
                "",
                "| file | true | p(crack) |",
                "|---|---|---|",
                *rows,
            ]
        )
        log_text(trainer.loggers, f"{stage}/misclassified", table, step)
