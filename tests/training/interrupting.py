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

    With `rank`, only that process of a multi-process run is signalled. `again` sends the signal
    a second time: "at_once" right after the first, "while_saving" while the next checkpoint is
    being written.
    """

    def __init__(
        self,
        step: int,
        signal_name: str = "SIGTERM",
        rank: int | None = None,
        again: str | None = None,
    ):
        self.step = step
        self.signum = signal.Signals[signal_name]
        self.rank = rank
        self.again = again
        self._armed = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Signal at the chosen step of a fresh run."""
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), self.signum)
            if self.again == "at_once":
                os.kill(os.getpid(), self.signum)
            self._armed = self.again == "while_saving"

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The second signal, in the middle of writing a checkpoint."""
        if self._armed:
            self._armed = False
            os.kill(os.getpid(), self.signum)
