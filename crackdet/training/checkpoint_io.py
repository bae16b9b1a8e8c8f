"""Checkpoint files written whole or not at all: a failed save never damages the previous one."""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from crackdet.io import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file beside the checkpoint, then renames it over the old one.

    Lightning's own save goes through a temporary file in the system temp folder; when that is
    on another disk the "rename" is a copy that truncates the previous checkpoint first, so a
    full disk would destroy `last.ckpt`. Here a failed save raises `OutputError` naming the file
    and the reason (disk full, not writable), and the previous checkpoint stays loadable.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Serialise `checkpoint` in memory, then write it atomically to `path`."""
        if "://" in str(path):  # remote storage (s3://...): fsspec's own transaction applies
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got "
                f"{storage_options!r}."
            )
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
