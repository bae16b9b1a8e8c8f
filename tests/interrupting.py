"""A test-only callback that interrupts a training run the way `kill` or Ctrl-C would.

Used through the real entry point: `+callbacks.interrupt_at._target_=tests.interrupting.SignalAtStep`.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAtStep(L.Callback):
    """Sends this process `signal_name` when the training step `step` starts (not when resuming)."""

    def __init__(self, step: int, signal_name: str = "SIGTERM"):
        self.step = step
        self.signum = signal.Signals[signal_name]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Signal at the chosen step of a fresh run."""
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), self.signum)
