"""Checking a downloaded archive: its SHA-256, and that a file left from an earlier run is whole."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

from crackdet.data.download.messages import DownloadError

RAR_MAGIC = b"Rar!\x1a\x07"


def normalise_sha256(sha256: str | None) -> str | None:
    """The expected digest in lower case, or a DownloadError when it is not 64 hex digits."""
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return value


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, shown_name: str) -> str:
    """The file's SHA-256 when it is `expected`; otherwise delete the file and raise."""
    actual = sha256_of(path)
    if actual != expected:
        # A file that fails its checksum must not survive: a later run would reuse it.
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch for {shown_name}: expected {expected}, got {actual}. "
            "The file was deleted; re-run to download it again (if the mismatch repeats, "
            "the file on the server changed or --sha256 is wrong)."
        )
    return actual


def is_rar(path: Path) -> bool:
    """True for a RAR archive, by its suffix or its first bytes."""
    if path.suffix.lower() == ".rar":
        return True
    with path.open("rb") as fh:
        return fh.read(len(RAR_MAGIC)) == RAR_MAGIC


def archive_problem(path: Path) -> str | None:
    """Why `path` is not a whole archive (e.g. a download cut short), or None when it is."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                # Reads every member and checks its CRC: a truncated or damaged file fails here.
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            return f"it is a damaged zip file ({exc})"
        return None if bad is None else f"its member {bad!r} is damaged"
    if is_rar(path):
        return None  # Checked by the RAR tool that extracts it.
    return "it is neither a zip nor a RAR archive (an interrupted or failed download?)"
