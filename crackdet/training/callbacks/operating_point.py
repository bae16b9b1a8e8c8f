"""Choosing the decision threshold on every validation epoch and saving it with the checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from crackdet.evaluation.threshold import (
    CHECKPOINT_KEY,
    DEFAULT_TARGET_RECALL,
    check_target_recall,
    threshold_for_recall,
)
from crackdet.training.callbacks.outputs import EpochOutputs


class OperatingPoint(EpochOutputs):
    """Stores the threshold reaching `target_recall` on the validation split in each checkpoint.

    A checkpoint is saved right after the validation epoch it is judged on, so `best.ckpt` holds
    the threshold chosen from the best weights' own validation predictions.
    """

    def __init__(self, target_recall: float = DEFAULT_TARGET_RECALL):
        super().__init__()
        self.target_recall = check_target_recall(
            target_recall, "callbacks.operating_point.target_recall"
        )
        self.threshold: float | None = None

    def on_outputs(self, trainer, pl_module, stage, idx, probs, labels) -> None:
        """Choose the threshold from this validation epoch's predictions."""
        if stage != "val":
            return
        if not bool((labels == 1).any()):
            rank_zero_warn("The validation split holds no crack images: no threshold is stored.")
            self.threshold = None
            return
        self.threshold = threshold_for_recall(probs, labels, self.target_recall)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Add `checkpoint["crackdet"]["threshold"]` and `["target_recall"]` (plain floats)."""
        if self.threshold is not None:
            entry = checkpoint.setdefault(CHECKPOINT_KEY, {})
            entry["threshold"] = self.threshold
            entry["target_recall"] = self.target_recall
