"""A test-only callback that interrupts a training run the way `kill` or Ctrl-C would.

Used through the real entry point: `+callbacks.interrupt_at._target_=tests.training.interrupting.SignalAtStep`.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAtStep(L.Callback):
    """Sends this process `signal_name` when the training step `step` starts (not when resuming).

    With `rank`, only that process of a multi-process run is signalled.
    """

    def __init__(self, step: int, signal_name: str = "SIGTERM", rank: int | None = None):
        self.step = step
        self.signum = signal.Signals[signal_name]
        self.rank = rank

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Signal at the chosen step of a fresh run."""
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), self.signum)
