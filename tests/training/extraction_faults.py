"""Test-only callbacks that interrupt feature extraction the way `kill` or Ctrl-C would, or make
a feature cache write fail, in a run started through the real entry point, e.g.
`+callbacks.fault._target_=tests.training.extraction_faults.SignalDuringExtraction`.
"""

from __future__ import annotations

import errno
import os
import signal

import lightning as L

from crackdet.training import feature_cache


class SignalDuringExtraction(L.Callback):
    """Sends this process `signal_name` while the backbone computes feature batch `batch` (from 1).

    Wraps the feature cache's extraction for this process, so the signal arrives in the middle of
    extraction, as `kill` or Ctrl-C would during a long one.
    """

    def __init__(self, batch: int, signal_name: str = "SIGTERM"):
        self.batch = batch
        self.signum = signal.Signals[signal_name]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Make the `batch`-th extracted batch signal this process."""
        real = feature_cache.extract_batches
        seen = 0

        def signalling(datamodule, extract, records, *args, **kwargs):
            def run(images):
                nonlocal seen
                seen += 1
                if seen == self.batch:
                    os.kill(os.getpid(), self.signum)
                return extract(images)

            return real(datamodule, run, records, *args, **kwargs)

        feature_cache.extract_batches = signalling


class FailCacheWrite(L.Callback):
    """Makes every feature cache write of process `rank` fail with an OSError (`errno_name`)."""

    def __init__(self, rank: int = 0, errno_name: str = "EIO"):
        self.rank = rank
        self.errno = getattr(errno, errno_name)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Replace the cache's file writer in this process when it is the chosen rank."""
        if trainer.global_rank != self.rank:
            return

        def failing(path, data):
            raise OSError(self.errno, os.strerror(self.errno), str(path))

        feature_cache.atomic_write_bytes = failing
