"""What a run cost: parameter counts and the measured training throughput, for metrics.json."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def parameter_counts(module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict:
    """All parameters of `module`, and those the optimizers update (the ones that train)."""
    optimized = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    return {
        "parameters": sum(p.numel() for p in module.parameters()),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if id(p) in optimized),
    }


class TrainingCost(L.Callback):
    """Times the training batches (loading included, validation excluded) and counts parameters.

    `summary` holds `parameters`, `trainable_parameters` (in the optimizer at the end of fit, so a
    backbone unfrozen by BackboneFinetuning counts), `train_images`, `train_seconds`,
    `train_images_per_s` (all processes together) and whether cached features replaced the
    backbone's forward pass (`cached_features`).
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._last: float | None = None
        self.summary: dict[str, Any] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock: the first batch's loading counts."""
        self._last = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Add this batch's images and the time since the previous batch ended."""
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
            self.images += len(batch[1])
        self._last = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop the clock while validating."""
        self._last = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restart the clock after a validation within an epoch."""
        self._last = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fill `summary` from what was measured."""
        world = trainer.world_size
        rate = self.images * world / self.seconds if self.seconds else None
        datamodule = trainer.datamodule
        self.summary = {
            **parameter_counts(pl_module, trainer.optimizers),
            "train_images": self.images * world,
            "train_seconds": round(self.seconds, 3),
            "train_images_per_s": rate,
            "cached_features": bool(getattr(datamodule, "feature_source", None)),
        }


def training_cost(trainer: L.Trainer) -> dict[str, Any] | None:
    """The TrainingCost summary of a fitted trainer (None without the callback)."""
    found = [c for c in trainer.callbacks if isinstance(c, TrainingCost)]
    return found[0].summary if found and found[0].summary else None
