"""Finding the labelled images of a folder data set and checking every file before training."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from crackdet.data.classes import CLASS_LABELS
from crackdet.data.images import decode_rgb, visible_files
from crackdet.errors import DataError
from crackdet.io import atomic_write_text

# Files that operating systems and tools leave in image folders; never data, never an error.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: where it is, its label, and the hash of its bytes."""

    path: str
    label: int
    digest: str


@dataclass
class ScanResult:
    """The usable images of a folder data set and the files that could not be read."""

    records: list[ImageRecord]
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def check_data_dir(data_dir: str | Path, classes: Mapping[str, Sequence[str]]) -> Path:
    """The data folder, once it and every class folder are known to exist; errors name the fix."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.data_dir={root} does not exist or is not a folder. Point data.data_dir at a "
            "folder holding Positive/ and Negative/ (or run `python -m crackdet.data.download`)."
        )
    if set(classes) != set(CLASS_LABELS):
        raise DataError(
            f"data.classes has keys {sorted(classes)}; it needs exactly 'negative' and 'positive', "
            "each a list of folder names, e.g. data.classes.positive=[Positive]."
        )
    for key, folders in classes.items():
        for folder in _folder_list(folders):
            if not (root / folder).is_dir():
                present = sorted(p.name for p in root.iterdir() if p.is_dir())
                raise DataError(
                    f"data.data_dir={root} has no {folder}/ folder (data.classes.{key} lists it). "
                    f"Folders present: {present or 'none'}. Create it or set "
                    f"data.classes.{key}=[<folder name>]."
                )
    return root


def _folder_list(folders: str | Sequence[str]) -> list[str]:
    return [folders] if isinstance(folders, str) else list(folders)


def list_labelled_files(
    data_dir: str | Path, classes: Mapping[str, Sequence[str]]
) -> list[tuple[Path, int]]:
    """Every file below each class folder, sorted by name, with its label; errors name the fix."""
    root = check_data_dir(data_dir, classes)
    files: list[tuple[Path, int]] = []
    for key, folders in classes.items():
        label = CLASS_LABELS[key]
        for folder in _folder_list(folders):
            class_dir = root / folder
            found = sorted(
                p for p in visible_files(class_dir) if p.name.lower() not in _IGNORED_NAMES
            )
            if not found:
                raise DataError(
                    f"{class_dir} is empty: the {key} class needs at least one image file."
                )
            files.extend((p, label) for p in found)
    return files


def inspect_file(path: Path) -> str:
    """Hash the file's bytes and decode it completely; raises on unreadable or corrupt images."""
    data = path.read_bytes()
    if not data:
        raise ValueError("empty file (0 bytes)")
    decode_rgb(data)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _ScanCache:
    """Results of earlier inspections, keyed by path, size and modification time."""

    def __init__(self, cache_dir: str | Path | None, data_dir: Path):
        self.path = None
        self.entries: dict[str, list] = {}
        if cache_dir is not None:
            key = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=8).hexdigest()
            self.path = Path(cache_dir) / "scan" / f"{key}.json"
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def lookup(self, path: Path, stat: os.stat_result) -> list | None:
        entry = self.entries.get(str(path))
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry
        return None

    def save(self, entries: dict[str, list]) -> None:
        if self.path is None:
            return
        atomic_write_text(self.path, json.dumps(entries))


def scan_folder(
    data_dir: str | Path,
    classes: Mapping[str, Sequence[str]],
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> ScanResult:
    """List, hash and fully decode every labelled file, separating usable images from bad ones."""
    files = list_labelled_files(data_dir, classes)
    cache = _ScanCache(cache_dir, Path(data_dir).expanduser())

    def check(item: tuple[Path, int]) -> tuple[str, list]:
        path, _ = item
        stat = path.stat()
        cached = cache.lookup(path, stat)
        if cached is not None:
            return str(path), cached
        try:
            digest, error = inspect_file(path), None
        except Exception as exc:  # any decoder failure makes the file bad, whatever its type
            digest, error = None, f"{type(exc).__name__}: {exc}"
        return str(path), [stat.st_size, stat.st_mtime_ns, digest, error]

    # Decoding releases the GIL, so threads overlap it with reading the next files.
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(check, files))
    cache.save(dict(results))

    records, bad = [], []
    for (path, label), (_, (_, _, digest, error)) in zip(files, results, strict=True):
        if error is None:
            records.append(ImageRecord(str(path), label, digest))
        else:
            bad.append((str(path), error))
    return ScanResult(records, bad)


def format_bad_files(bad_files: Sequence[tuple[str, str]], limit: int = 20) -> str:
    """A readable list of the first `limit` bad files and how many there are in all."""
    lines = [f"  {path}: {error}" for path, error in bad_files[:limit]]
    if len(bad_files) > limit:
        lines.append(f"  ... and {len(bad_files) - limit} more")
    return f"{len(bad_files)} unreadable file(s):\n" + "\n".join(lines)
