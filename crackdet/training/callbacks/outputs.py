"""Collecting per-sample outputs of an evaluation epoch, across processes."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist


class EpochOutputs(L.Callback):
    """Gathers (index, probability, label) of every val/test sample, then calls `on_outputs`."""

    def __init__(self) -> None:
        self._buffers: dict[str, list[tuple[torch.Tensor, ...]]] = {"val": [], "test": []}

    def _collect(self, stage: str, trainer: L.Trainer, outputs: Any) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict) or "probs" not in outputs:
            return
        self._buffers[stage].append(
            (outputs["idx"].cpu(), outputs["probs"].float().cpu(), outputs["labels"].cpu())
        )

    def _finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        parts, self._buffers[stage] = self._buffers[stage], []
        if trainer.sanity_checking:
            return
        if parts:
            local = [torch.cat(column) for column in zip(*parts, strict=True)]
        else:
            local = [torch.empty(0, dtype=torch.long), torch.empty(0), torch.empty(0).long()]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            columns = [torch.cat([g[i] for g in gathered]) for i in range(3)]
        else:
            columns = local
        idx, probs, labels = columns
        # A padded distributed sampler may repeat samples: keep each index once, in order.
        order = torch.argsort(idx, stable=True)
        idx, probs, labels = idx[order], probs[order], labels[order]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[1:] = idx[1:] != idx[:-1]
        if trainer.is_global_zero:
            self.on_outputs(trainer, pl_module, stage, idx[keep], probs[keep], labels[keep])

    def on_outputs(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stage: str,
        idx: torch.Tensor,
        probs: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        """Called on rank zero with every sample of the epoch, sorted by dataset index."""
        raise NotImplementedError

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._collect("val", trainer, outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect("test", trainer, outputs)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._finish("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._finish("test", trainer, pl_module)
