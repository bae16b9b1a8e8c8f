"""`checkpoints/last.ckpt`: the newest epoch, for resuming, written at most every N seconds."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from crackdet.errors import ConfigError


class LastCheckpoint(Checkpoint):
    """Writes `<dirpath>/last.ckpt` at the end of an epoch once `every_seconds` have passed.

    A checkpoint holds the whole frozen backbone (45 MB for ResNet18), so writing one after every
    epoch costs more than the epoch itself when the head trains on cached features (a fraction
    of a second per epoch). An epoch's end is written when `every_seconds` have passed since the
    last write (or since training started), and the fit's last epoch always is; `every_seconds=0`
    writes every epoch. A run killed without warning (SIGKILL, power loss) thus loses at most
    `every_seconds` or one epoch of training, whichever is longer; Ctrl-C and SIGTERM still save
    `interrupted.ckpt` at once. As a `Checkpoint`, Lightning runs it after the other callbacks'
    end-of-epoch hooks, so the file holds their state at the end of the epoch.
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str | Path, every_seconds: float = 30.0):
        number = not isinstance(every_seconds, bool) and isinstance(every_seconds, (int, float))
        if not number or every_seconds < 0:
            raise ConfigError(
                f"callbacks.last_checkpoint.every_seconds={every_seconds} must be a number of "
                "seconds >= 0 (0: write last.ckpt after every epoch)."
            )
        self.path = Path(dirpath) / self.FILENAME
        self.every_seconds = float(every_seconds)
        self._written_at = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Training starts: the interval counts from here."""
        self._written_at = time.monotonic()

    def _due(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's end is written: the interval has passed, or the fit ends now."""
        limit = trainer.max_epochs  # -1: no epoch limit (trainer.max_steps ends the fit)
        last_epoch = limit is not None and limit > 0 and trainer.current_epoch + 1 >= limit
        last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        elapsed = time.monotonic() - self._written_at >= self.every_seconds
        # Saving is collective (all processes, then a barrier): every rank follows rank zero.
        return bool(
            trainer.strategy.broadcast(elapsed or last_epoch or last_step or trainer.should_stop)
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write last.ckpt at the end of this epoch when it is due."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.fast_dev_run or not self._due(trainer):
            return
        trainer.save_checkpoint(self.path)
        self._written_at = time.monotonic()
