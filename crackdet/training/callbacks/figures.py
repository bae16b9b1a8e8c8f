"""TensorBoard figures per evaluation epoch: confusion matrix and the most confident mistakes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.functional.classification import binary_confusion_matrix

from crackdet.data.classes import CLASS_NAMES
from crackdet.data.transforms import denormalize
from crackdet.evaluation.mistakes import most_confident_mistakes
from crackdet.evaluation.plots import confusion_matrix_figure, image_grid_figure
from crackdet.training.callbacks.outputs import EpochOutputs


def _tensorboard(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class EvaluationFigures(EpochOutputs):
    """Logs `<stage>/confusion_matrix` and `<stage>/misclassified` figures to TensorBoard."""

    def __init__(self, max_images: int = 16, threshold: float = 0.5):
        super().__init__()
        self.max_images = max_images
        self.threshold = threshold

    def on_outputs(self, trainer, pl_module, stage, idx, probs, labels) -> None:
        """Draw both figures for this epoch and add them at the current global step."""
        writer = _tensorboard(trainer)
        if writer is None or not len(idx):
            return
        step = trainer.global_step
        counts = binary_confusion_matrix(probs, labels, threshold=self.threshold)
        fig = confusion_matrix_figure(counts, CLASS_NAMES, f"{stage}: {len(idx)} images")
        writer.add_figure(f"{stage}/confusion_matrix", fig, global_step=step)
        plt.close(fig)

        chosen = most_confident_mistakes(probs, labels, self.max_images, self.threshold)
        if not len(chosen):
            return
        dataset = trainer.datamodule.datasets[stage]
        mean, std = trainer.datamodule.mean, trainer.datamodule.std
        images, titles = [], []
        for position in chosen.tolist():
            sample = int(idx[position])
            image = dataset[sample][0]
            images.append(denormalize(image, mean, std).permute(1, 2, 0).numpy())
            name = Path(dataset.records[sample].path).name
            titles.append(
                f"{name}\ntrue {CLASS_NAMES[int(labels[position])]}, "
                f"p(crack)={float(probs[position]):.3f}"
            )
        fig = image_grid_figure(images, titles, title=f"{stage}: most confident mistakes")
        writer.add_figure(f"{stage}/misclassified", fig, global_step=step)
        plt.close(fig)
