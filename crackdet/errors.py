"""Errors that name the file or setting at fault and the fix."""

from __future__ import annotations

import errno


class CrackdetError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the entry points."""


class DataError(CrackdetError):
    """The data folder or one of its files cannot be used as configured."""


class ConfigError(CrackdetError):
    """A configuration value is out of range or inconsistent."""


class CheckpointError(ConfigError):
    """A checkpoint file is damaged, not a checkpoint, or of another model."""


class WeightsError(CrackdetError):
    """Backbone weights cannot be found, downloaded or loaded."""


class OutputError(CrackdetError, OSError):
    """An output file cannot be written (disk full, read-only or missing folder).

    Also an OSError, so code that handles OSError keeps working.
    """

    @classmethod
    def from_os_error(cls, path: object, exc: OSError) -> OutputError:
        """Name the file, say why the write failed in plain words, and how to fix it."""
        return cls(
            f"Could not write {path}: {write_failure_reason(exc)}. Earlier files are "
            "left as they were. Fix: free space or permissions there, or send the outputs to a "
            "writable folder with paths.log_dir=<folder> (or hydra.run.dir=<folder>)."
        )


_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded (the disk is full for this user)",
    errno.EACCES: "the folder is not writable (permission denied)",
    errno.EPERM: "the folder is not writable (operation not permitted)",
    errno.EROFS: "the folder is on a read-only file system (not writable)",
    errno.ENOTDIR: "a file is in the way where a folder is needed (not writable)",
}


def write_failure_reason(exc: OSError) -> str:
    """Why a write failed, in plain words, followed by the system's own message."""
    reason = _WRITE_FAILURES.get(exc.errno or 0, exc.strerror or "the write failed")
    return f"{reason} ({type(exc).__name__}: {exc})"
