"""Checkpoint files written whole or not at all: a failed save never damages the previous one."""

from __future__ import annotations

import io
import os
from pathlib import Path
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
        data = buffer.getvalue()
        if not self._link_to_identical(data, Path(path)):
            atomic_write_bytes(path, data)
        self._last = (Path(path), _identity(Path(path)), data)

    #: The last checkpoint saved: its path, file identity and bytes.
    _last: tuple[Path, tuple[int, int, int, int], bytes] | None = None

    def _link_to_identical(self, data: bytes, path: Path) -> bool:
        """Make `path` a hard link to the last checkpoint saved when its bytes are these.

        At the end of a fit whose last epoch is its best, `last.ckpt` and `best.ckpt` hold the
        same bytes (45 MB for ResNet18): one file with two names takes half the disk space and
        no second write. Renamed into place like a write, so either name can later be replaced
        or deleted alone. Anything in the way (another file system, no hard links, the earlier
        file changed since) and the checkpoint is written as usual.
        """
        if self._last is None or self._last[2] != data or self._last[0] == path:
            return False
        source, identity = self._last[0], self._last[1]
        tmp = path.with_name(f".{path.name}.link.tmp")
        try:
            if _identity(source) != identity:
                return False
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What tells a file apart from a replaced one: device, inode, size, modification time."""
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
