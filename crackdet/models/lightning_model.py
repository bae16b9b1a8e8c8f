"""The LightningModule: training logic (steps, metrics, optimiser) around `CrackNet`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torchmetrics import MaxMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)

from crackdet.errors import ConfigError
from crackdet.models.backbone import DEFAULT_BACKBONE
from crackdet.models.runtime import FeatureFn, choose_runtime
from crackdet.models.settings import build_classifier, upgrade_weight_names


def stage_metrics(prefix: str) -> MetricCollection:
    """The binary metrics logged for one stage; crack (label 1) is the positive class."""
    return MetricCollection(
        {
            "acc": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "specificity": BinarySpecificity(),
            "f1": BinaryF1Score(),
            "auroc": BinaryAUROC(),
        },
        prefix=f"{prefix}/",
    )


class CrackClassifier(L.LightningModule):
    """Backbone features (frozen by default) followed by a Linear(feature width, 2) head."""

    def __init__(
        self,
        weights: str | None = None,
        bn_mode: str = "frozen",
        trainable: str = "head",
        num_classes: int = 2,
        dropout: float = 0.0,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        scheduler_monitor: str = "val/loss",
        channels_last: bool = True,
        backbone_runtime: str = "auto",
        backbone_precision: str = "fp32",
        backbone: str = DEFAULT_BACKBONE,
        backbone_lr: float | None = None,
        freeze_backbone: bool | None = None,
    ):
        super().__init__()
        settings, self.net = build_classifier(
            weights=weights,
            bn_mode=bn_mode,
            trainable=trainable,
            num_classes=num_classes,
            dropout=dropout,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_monitor=scheduler_monitor,
            channels_last=channels_last,
            backbone_runtime=backbone_runtime,
            backbone_precision=backbone_precision,
            backbone=backbone,
            backbone_lr=backbone_lr,
            freeze_backbone=freeze_backbone,
        )
        self.save_hyperparameters(settings)
        self.loss_fn = nn.CrossEntropyLoss()
        # nn.Module already has a `train` attribute, so stages are keyed with a suffix.
        self.metrics = nn.ModuleDict(
            {f"{stage}_": stage_metrics(stage) for stage in ("train", "val", "test")}
        )
        self.sample_counts = nn.ModuleDict({f"{s}_": SumMetric() for s in ("val", "test")})
        self.val_acc_best = MaxMetric()
        #: Computes backbone features of image batches in evaluation steps when set (eval.py).
        self.feature_fn: FeatureFn | None = None

    @property
    def backbone(self) -> nn.Module:
        """The feature extractor (`self.net.backbone`)."""
        return self.net.backbone

    @property
    def head(self) -> nn.Module:
        """The trainable fc head (`self.net.head`)."""
        return self.net.head

    @property
    def backbone_frozen_in_eval(self) -> bool:
        """True when the backbone's outputs cannot change during training."""
        return self.net.backbone_frozen_in_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised images (or of precomputed features)."""
        return self.net(x)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Accept checkpoints written before the weights moved under `net.`."""
        upgrade_weight_names(checkpoint)

    def setup(self, stage: str) -> None:
        """Refuse a backbone runtime or precision this machine cannot run, or a fine-tuning
        callback that would unfreeze more than `model.trainable` says, before any work."""
        finetuning = [c for c in self.trainer.callbacks if isinstance(c, BaseFinetuning)]
        if finetuning and self.hparams.trainable != "all":
            raise ConfigError(
                f"callbacks.{type(finetuning[0]).__name__} unfreezes the whole backbone, but "
                f"model.trainable={self.hparams.trainable}: set model.trainable=all with it."
            )
        if self.feature_fn is not None:  # already built by its user (eval.py), who chose
            return
        choose_runtime(
            self.hparams.backbone_runtime,
            self.hparams.get("backbone_precision", "fp32"),
            self.trainer.strategy.root_device,
        )

    def _shared_step(self, batch: Any, stage: str) -> dict[str, torch.Tensor]:
        x, y, idx = batch
        use_runtime = self.feature_fn is not None and x.ndim == 4 and stage != "train"
        features = self.feature_fn(x).to(self.dtype) if use_runtime else self.net.features(x)
        logits = self.net.head(features)
        loss = self.loss_fn(logits, y)
        probs = logits.softmax(dim=-1)[:, 1]
        metrics = self.metrics[f"{stage}_"]
        metrics.update(probs, y)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=not on_step,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(y))
        if stage != "train":
            self.sample_counts[f"{stage}_"].update(torch.tensor(float(len(y)), device=self.device))
            self.log(
                f"{stage}/samples", self.sample_counts[f"{stage}_"], on_step=False, on_epoch=True
            )
        return {"loss": loss, "probs": probs.detach(), "labels": y.detach(), "idx": idx}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Cross-entropy on one batch; `train/loss` is logged every step."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Loss and metrics on one validation batch; per-sample outputs go to callbacks."""
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Loss and metrics on one test batch; per-sample outputs go to callbacks."""
        return self._shared_step(batch, "test")

    def _fresh_metric_states(self, stage: str) -> None:
        # ddp_spawn on the CPU hands every process the same shared-memory metric tensors, so each
        # process would count every sample of the others too; reset() gives each its own.
        self.metrics[f"{stage}_"].reset()
        if f"{stage}_" in self.sample_counts:
            self.sample_counts[f"{stage}_"].reset()

    def on_fit_start(self) -> None:
        """Start training metrics from fresh states in this process."""
        self._fresh_metric_states("train")

    def on_validation_start(self) -> None:
        """Start validation metrics from fresh states in this process."""
        self._fresh_metric_states("val")

    def on_test_start(self) -> None:
        """Start test metrics from fresh states in this process."""
        self._fresh_metric_states("test")

    def on_validation_epoch_end(self) -> None:
        """Track the best validation accuracy so far as `val/acc_best`."""
        if self.trainer.sanity_checking:
            return
        self.val_acc_best.update(self.metrics["val_"]["acc"].compute())
        # Already the same on every rank (a synced metric); sync_dist only says so to Lightning.
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_train_start(self) -> None:
        """Forget anything the sanity check put into the running best (a resumed run keeps it)."""
        if self.trainer.ckpt_path is None:
            self.val_acc_best.reset()

    def on_train_epoch_start(self) -> None:
        """Re-assert the backbone's mode, whatever a loop or callback did to the module tree."""
        self.train(True)

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters: the head at the optimizer's lr, the backbone at model.backbone_lr."""
        groups = [{"params": [p for p in self.net.head.parameters() if p.requires_grad]}]
        backbone = [p for p in self.net.backbone.parameters() if p.requires_grad]
        if backbone:
            lr = self.hparams.backbone_lr
            groups.append({"params": backbone, **({} if lr is None else {"lr": lr})})
            groups[0]["name"], groups[1]["name"] = "head", "backbone"
        return groups

    def configure_optimizers(self) -> Any:
        """The configured optimizer over trainable parameters only, plus an optional scheduler."""
        optimizer = instantiate(self.hparams.optimizer)(params=self.param_groups())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.scheduler_monitor},
        }
