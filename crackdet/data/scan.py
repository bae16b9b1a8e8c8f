"""Finding the labelled images of a folder data set and checking every file before training."""

from __future__ import annotations

import atexit
import csv
import hashlib
import io
import json
import os
import pickle
import re
import stat
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from crackdet.data.classes import CLASS_LABELS
from crackdet.data.images import check_decodes
from crackdet.errors import DataError
from crackdet.io import atomic_write_text

#: The content fingerprint of every image: BLAKE2b of its bytes, 16-byte digest, as hex.
FINGERPRINT = "blake2b-128"

# Files that operating systems and tools leave in image folders; never data, never an error.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
# How many names an error message lists before it only counts the rest.
_LISTED = 10


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: where it is, its label, and the fingerprint of its bytes."""

    path: str
    label: int
    digest: str


@dataclass
class ScanResult:
    """The usable images of a folder data set, the files that could not be read, and the links."""

    records: list[ImageRecord]
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    #: Symbolic links (to files or folders) below the class folders that were followed.
    links_followed: int = 0
    #: Links to a folder already listed (a loop, or a second link to it): its files count once.
    repeated_folders: list[str] = field(default_factory=list)


def fingerprint(data: bytes) -> str:
    """The content fingerprint of a file's bytes (`FINGERPRINT`)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def shown(path: str | Path) -> str:
    """A path as one printable line: names with newlines, tabs or other control characters quoted."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _listed(items: Sequence[str], limit: int = _LISTED) -> str:
    lines = [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def _folder_list(folders: str | Sequence[str]) -> list[str]:
    return [folders] if isinstance(folders, str) else list(folders)


def _class_folders(classes: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """Every (class key, folder name) of `data.classes`, in configuration order."""
    return [(key, folder) for key, folders in classes.items() for folder in _folder_list(folders)]


@dataclass
class _Walk:
    """What walking the class folders met besides image files."""

    links: int = 0
    dangling: list[tuple[str, str]] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)


def _walk(top: Path, found: _Walk) -> Iterator[Path]:
    """Every visible file below `top`, following symbolic links; each folder is entered once.

    Hidden files and folders (`.thumbnails/`, `.DS_Store`) and tool litter (Thumbs.db) are not
    data. A link that points nowhere is recorded in `found.dangling`, a link to a folder already
    entered in `found.repeated` (so a loop ends and no file is listed twice).
    """
    info = top.stat()
    entered = {(info.st_dev, info.st_ino)}
    pending = [top]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name, reverse=True)
        for entry in entries:
            if entry.name.startswith(".") or entry.name.lower() in _IGNORED_NAMES:
                continue
            path = Path(entry.path)
            link = entry.is_symlink()
            try:
                info = entry.stat()  # follows the link
            except OSError as exc:
                if not link:
                    raise
                found.dangling.append(
                    (str(path), f"broken symbolic link to {os.readlink(path)} ({exc.strerror})")
                )
                continue
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in entered:
                    found.repeated.append(str(path))
                    continue
                entered.add(key)
                pending.append(path)
                found.links += link
            elif stat.S_ISREG(info.st_mode):
                found.links += link
                yield path
            else:
                found.dangling.append((str(path), "not a regular file (a device, FIFO or socket)"))


def check_data_dir(data_dir: str | Path, classes: Mapping[str, Sequence[str]]) -> Path:
    """The data folder, once every class folder is known to exist, hold a file and be disjoint.

    All problems are reported in one DataError naming the folders and the fix.
    """
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
    problems: list[str] = []
    existing: list[tuple[str, str, Path]] = []
    for key, folder in _class_folders(classes):
        if (root / folder).is_dir():
            existing.append((key, folder, (root / folder).resolve()))
        else:
            problems.append(f"there is no {folder}/ folder (data.classes.{key} lists it).")
    for i, (key_a, name_a, real_a) in enumerate(existing):
        for key_b, name_b, real_b in existing[i + 1 :]:
            where = f"data.classes.{key_a} {name_a} and data.classes.{key_b} {name_b}"
            if real_a == real_b:
                problems.append(f"{where} are the same folder ({real_a}).")
            elif real_a.is_relative_to(real_b) or real_b.is_relative_to(real_a):
                problems.append(f"{where} overlap: one is inside the other ({real_a}, {real_b}).")
    for key, folder, _ in existing:
        if next(_walk(root / folder, _Walk()), None) is None:
            problems.append(
                f"{root / folder} is empty: data.classes.{key} needs at least one image file."
            )
    if problems:
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != ".")
        raise DataError(
            f"data.data_dir={root} has class folders that cannot be used:\n"
            + _listed(problems, limit=len(problems))
            + f"\nFolders present: {present or 'none'}. Every folder of data.classes must exist, "
            "hold images and belong to one class only, e.g. data.classes.positive=[Positive] "
            "data.classes.negative=[Negative]."
        )
    return root


def list_labelled_files(
    data_dir: str | Path, classes: Mapping[str, Sequence[str]], found: _Walk | None = None
) -> list[tuple[Path, int]]:
    """Every file below each class folder, sorted by name, with its label; errors name the fix.

    Symbolic links are followed; one file reached by two paths (through a link) is an error.
    """
    root = check_data_dir(data_dir, classes)
    found = found if found is not None else _Walk()
    files: list[tuple[Path, int]] = []
    for key, folder in _class_folders(classes):
        files.extend((p, CLASS_LABELS[key]) for p in sorted(_walk(root / folder, found)))
    if found.links:
        _check_each_file_once(files)
    return files


def _check_each_file_once(files: Sequence[tuple[Path, int]]) -> None:
    """Links may lead to one file twice (or into the other class): refuse that by name."""
    paths_of: dict[str, list[Path]] = defaultdict(list)
    for path, _ in files:
        paths_of[os.path.realpath(path)].append(path)
    twice = [
        " and ".join(shown(p) for p in paths) + f" are one file ({shown(real)})"
        for real, paths in paths_of.items()
        if len(paths) > 1
    ]
    if twice:
        raise DataError(
            f"{len(twice)} file(s) are reached by more than one path through symbolic links, "
            "so they would be counted twice (or in both classes):\n"
            + _listed(twice)
            + "\nRemove the extra links so that every image is listed once."
        )


# Pillow names a file it cannot identify by its object's repr when decoding from memory.
_BUFFER_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def decode_failure(exc: BaseException) -> str:
    """Why a file is unusable, in the decoder's own words (without in-memory object names)."""
    message = _BUFFER_REPR.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def inspect_bytes(data: bytes) -> str | None:
    """None when `data` decodes completely as an image, else why it does not."""
    if not data:
        return "empty file (0 bytes)"
    try:
        check_decodes(data)
    except Exception as exc:  # any decoder failure makes the file bad, whatever its type
        return decode_failure(exc)
    return None


class _ScanCache:
    """Decoding results of earlier scans, keyed by the fingerprint of each file's bytes.

    Only content decides: a file replaced by another one of the same size and modification
    time (copies with `cp -p`, `rsync -t`, restores) has another fingerprint and is decoded again.
    """

    VERSION = 2

    def __init__(self, cache_dir: str | Path | None, data_dir: Path):
        self.path = None
        self.entries: dict[str, str | None] = {}
        if cache_dir is not None:
            key = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=8).hexdigest()
            self.path = Path(cache_dir) / "scan" / f"{key}.json"
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, ValueError):
                stored = {}
            if isinstance(stored, dict) and stored.get("version") == self.VERSION:
                self.entries = stored.get("decoded", {})

    def save(self, entries: dict[str, str | None]) -> None:
        if self.path is None or entries == self.entries:
            return
        data = {"version": self.VERSION, "fingerprint": FINGERPRINT, "decoded": entries}
        atomic_write_text(self.path, json.dumps(data))


class _AheadScan:
    """A scan running in a child process; `result` is its ScanResult, or None if it failed."""

    def __init__(self, args: tuple[str, dict[str, list[str]], str | None]):
        # A fresh interpreter (not fork: the parent may hold threads and locks by now) that
        # finds this crackdet whether it is installed or run from its folder.
        package_parent = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from crackdet.data.scan import _scan_in_child; _scan_in_child()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its failure is the parent's to meet and report
            env={**os.environ, "PYTHONPATH": path},
        )
        self._process.stdin.write(pickle.dumps(args))
        self._process.stdin.close()
        atexit.register(self.cancel)  # a run that stops early does not leave it running

    def result(self) -> ScanResult | None:
        output = self._process.stdout.read()
        self._process.wait()
        atexit.unregister(self.cancel)
        if self._process.returncode != 0 or not output:
            return None
        return pickle.loads(output)

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def _scan_in_child() -> None:
    """The child of `_AheadScan`: arguments pickled on stdin, the ScanResult pickled on stdout."""
    data_dir, classes, cache_dir = pickle.loads(sys.stdin.buffer.read())
    try:
        # One core fewer than the machine has: the parent is importing torch on one meanwhile.
        result = scan_folder(
            data_dir, classes, cache_dir, workers=max(1, (os.cpu_count() or 1) - 1)
        )
    except Exception:  # the parent scans again and meets the error in its own process
        sys.exit(1)
    sys.stdout.buffer.write(pickle.dumps(result))


#: Scans started by `scan_ahead`, by what they scan.
_AHEAD: dict[tuple[str, str, str | None], _AheadScan] = {}


def _scan_key(
    data_dir: str | Path, classes: Mapping[str, Sequence[str]], cache_dir: str | Path | None
) -> tuple[str, str, str | None]:
    folders = {key: _folder_list(classes[key]) for key in sorted(classes)}
    absolute = os.path.abspath(os.path.expanduser(str(data_dir)))
    cache = None if cache_dir is None else os.path.abspath(os.path.expanduser(str(cache_dir)))
    return absolute, json.dumps(folders), cache


def scan_ahead(
    data_dir: str | Path, classes: Mapping[str, Sequence[str]], cache_dir: str | Path | None = None
) -> None:
    """Start `scan_folder(data_dir, classes, cache_dir)` in a child process; it is used there.

    A training run starts this before it imports torch and Lightning, which take seconds on one
    core while the others are idle; its data module's `scan_folder` then waits for the child's
    result instead of scanning. The child is a daemon process: a run that stops before it needs
    the result does not wait for it. If the child fails for any reason, `scan_folder` scans in
    its own process (and raises there what the scan meets, e.g. a missing folder).
    """
    key = _scan_key(data_dir, classes, cache_dir)
    if key not in _AHEAD:
        folders = {name: _folder_list(classes[name]) for name in classes}
        cache = None if cache_dir is None else str(cache_dir)
        _AHEAD[key] = _AheadScan((str(data_dir), folders, cache))


def scan_folder(
    data_dir: str | Path,
    classes: Mapping[str, Sequence[str]],
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> ScanResult:
    """List, fingerprint and fully decode every labelled file, separating usable from bad ones.

    Each file is read once: its bytes are fingerprinted, and decoded unless the scan cache knows
    the outcome for that fingerprint already. The result of a `scan_ahead` of the same folder is
    taken when it is there; other scans started ahead are no longer needed and are stopped.
    """
    ahead = _AHEAD.pop(_scan_key(data_dir, classes, cache_dir), None)
    for other in _AHEAD.values():
        other.cancel()
    _AHEAD.clear()
    result = ahead.result() if ahead is not None else None
    if result is not None:
        return result
    found = _Walk()
    files = list_labelled_files(data_dir, classes, found)
    cache = _ScanCache(cache_dir, Path(data_dir).expanduser())

    def check(item: tuple[Path, int]) -> tuple[str | None, str | None]:
        try:
            data = item[0].read_bytes()
        except OSError as exc:
            return None, f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
        digest = fingerprint(data)
        if digest in cache.entries:
            return digest, cache.entries[digest]
        return digest, inspect_bytes(data)

    # Hashing and decoding release the GIL, so threads overlap them with reading the next files.
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(check, files))
    cache.save({digest: error for digest, error in results if digest is not None})

    records, bad = [], list(found.dangling)
    for (path, label), (digest, error) in zip(files, results, strict=True):
        if error is None:
            records.append(ImageRecord(str(path), label, digest))
        else:
            bad.append((str(path), error))
    return ScanResult(records, sorted(bad), found.links, found.repeated)


def format_bad_files(bad_files: Sequence[tuple[str, str]], limit: int = 20) -> str:
    """A readable list of the first `limit` bad files and how many there are in all."""
    lines = [f"{shown(path)}: {error}" for path, error in bad_files]
    return f"{len(bad_files)} unreadable file(s):\n" + _listed(lines, limit)


def bad_files_table(bad_files: Sequence[tuple[str, str]]) -> str:
    """`bad_files.txt`: tab-separated `path`, `reason`, quoted where a name holds a tab or newline."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(("path", "reason"))
    writer.writerows(bad_files)
    return buffer.getvalue()
