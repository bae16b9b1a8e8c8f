"""Fetch the "Concrete Crack Images for Classification" data set into `<dest>/Positive|Negative`.

Usage: ``python -m crackdet.data.download [--dest DIR] [--url URL] [--sha256 HEX] [--keep-archive]``

The data set is Mendeley Data 5y9wdsg2zt, version 2 (Özgenel, CC BY 4.0): 40,000 227x227 RGB
images, 20,000 with a crack (`Positive/`) and 20,000 without (`Negative/`). Mendeley serves it as
a zip that, as far as we know, holds a single RAR file with the two folders; nothing here relies
on that layout: the folders are searched for anywhere in the zip and in any zip or RAR inside it.

Only the standard library is used, so the command works before the training dependencies are
installed; rich draws the progress bar when it happens to be importable.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import crackdet

DEFAULT_URL = "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/5y9wdsg2zt-2.zip"
LANDING_PAGE = "https://data.mendeley.com/datasets/5y9wdsg2zt/2"

#: SHA-256 of the archive at DEFAULT_URL. Unknown: we have never been able to record it from a
#: trusted copy, so the default download is checked by size only. Every completed download prints
#: its SHA-256; once a copy has been checked (e.g. its images open and the counts are 20,000 each),
#: pin that value here so later downloads are verified too.
KNOWN_SHA256: str | None = None

PROJECT_ROOT = Path(crackdet.__file__).resolve().parent.parent
#: Where `data.data_dir` of the training config looks by default.
DEFAULT_DEST = PROJECT_ROOT / "data" / "concrete_crack"

CLASS_FOLDERS = ("Positive", "Negative")
DOWNLOAD_DIRNAME = ".download"
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_TIMEOUT = 30.0
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

_USER_AGENT = f"crackdet-download/{getattr(crackdet, '__version__', '0')} (python-urllib)"
_ARCHIVE_SUFFIXES = (".zip", ".rar")
_RAR_MAGIC = b"Rar!\x1a\x07"
# The data set is a zip holding a rar; one more level absorbs a re-packaging without looping forever.
_MAX_NESTING = 3
_FOLDER_JUNK = {"__MACOSX"}


class DownloadError(Exception):
    """The data set could not be downloaded, verified or extracted; the message says what to do."""


# --------------------------------------------------------------------------- messages


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _manual_steps(url: str, archive: Path, data_dir: Path) -> str:
    return (
        "To get the data set by hand:\n"
        f"  1. on a machine with internet access, download {url}\n"
        f"     with a browser (landing page: {LANDING_PAGE});\n"
        f"  2. copy the file to {archive}\n"
        "     and re-run the same command: it reuses that file and extracts it;\n"
        f"  or extract it yourself so that {data_dir / 'Positive'} and {data_dir / 'Negative'} exist;\n"
        "  or point training at a copy you already have: data.data_dir=/path/to/folder "
        "(the folder holding Positive/ and Negative/)."
    )


def _data_dir_for(archive: Path) -> Path:
    # Archives live in <dest>/.download/ when called from fetch_dataset; name <dest> in the help.
    parent = archive.parent
    return parent.parent if parent.name == DOWNLOAD_DIRNAME else parent


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# --------------------------------------------------------------------------- progress


class _Progress:
    """Byte progress on stderr: rich when importable and on a terminal, else a plain line."""

    def __init__(self, total: int | None, done: int, label: str) -> None:
        self.total, self.done, self.label = total, done, label
        self._t0, self._done0, self._last = time.monotonic(), done, 0.0
        self._tty = sys.stderr.isatty()
        self._rich = None
        if self._tty:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )
            except ImportError:
                pass
            else:
                self._rich = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                )
                self._task = self._rich.add_task(label, total=total, completed=done)
                self._rich.start()

    def update(self, done: int) -> None:
        self.done = done
        if self._rich is not None:
            self._rich.update(self._task, completed=done)
            return
        now = time.monotonic()
        # Redraw often on a terminal; in a log, a line every few seconds is enough.
        if now - self._last >= (0.2 if self._tty else 5.0):
            self._last = now
            self._emit(final=False)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        else:
            self._emit(final=True)

    def _emit(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = (self.done - self._done0) / elapsed
        of = f"/{_human(self.total)}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        line = f"{self.label}: {_human(self.done)}{of}{pct} at {_human(rate)}/s"
        if self._tty:
            sys.stderr.write("\r" + line.ljust(78) + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------- download


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return value


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, shown_name: str) -> str:
    actual = _sha256_of(path)
    if actual != expected:
        # A file that fails its checksum must not survive: a later run would reuse it.
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch for {shown_name}: expected {expected}, got {actual}. "
            "The file was deleted; re-run to download it again (if the mismatch repeats, "
            "the file on the server changed or --sha256 is wrong)."
        )
    return actual


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, full size) of a `Content-Range: bytes a-b/total` header; None where unknown."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _validator_of(headers: http.client.HTTPMessage) -> str | None:
    # If-Range only accepts a strong ETag or a Last-Modified date; a weak ETag would be ignored.
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _reset(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def download(
    url: str,
    dest_file: str | Path,
    sha256: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download `url` to `dest_file` through a resumable `.part` file, verify it, return its path."""
    dest_file = Path(dest_file)
    expected = _normalise_sha256(sha256)
    help_text = _manual_steps(url, dest_file, _data_dir_for(dest_file))

    if dest_file.is_file():
        # Only complete downloads are ever renamed to the final name, so the file is trusted
        # (after its checksum, when one is known) and the network is not touched.
        if expected is not None:
            _check_sha256(dest_file, expected, str(dest_file))
        _log(f"Using the archive already downloaded: {dest_file}")
        return dest_file

    dest_file.parent.mkdir(parents=True, exist_ok=True)
    part = dest_file.with_name(dest_file.name + ".part")
    # The server's ETag/Last-Modified of the bytes in .part, so that a resume after the file
    # changed on the server gets the whole new file (200) instead of a spliced one.
    validator_file = dest_file.with_name(dest_file.name + ".part.validator")

    # Two restarts at most: the server ignored Range, or the .part no longer fits the file.
    for _attempt in range(3):
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator_file.is_file():
                headers["If-Range"] = validator_file.read_text().strip()
        try:
            request = urllib.request.Request(url, headers=headers)
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                _, total = _parse_content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    break  # The .part already holds the whole file.
                _log(f"Partial download {part.name} does not match the server's file; restarting.")
                _reset(part, validator_file)
                continue
            raise DownloadError(
                f"The server refused the download of {url}: HTTP {exc.code} {exc.reason}.\n"
                f"The file may have moved; check {LANDING_PAGE}.\n{help_text}"
            ) from exc
        except ValueError as exc:
            raise DownloadError(f"Invalid download URL {url!r}: {exc}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(
                f"Could not connect to download {url}: {reason}.\n"
                f"No network access, or the host cannot be reached from here.\n{help_text}"
            ) from exc

        with response:
            if response.status == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    _log(f"The server resumed at byte {start}, not {offset}; restarting.")
                    _reset(part, validator_file)
                    continue
                mode = "ab"
                _log(f"Resuming {dest_file.name} at {_human(offset)}")
            else:
                if offset:
                    _log(
                        "The server does not support resuming (no 206 reply); restarting from zero."
                    )
                offset, mode = 0, "wb"
                length = response.headers.get("Content-Length", "")
                total = int(length) if length.strip().isdigit() else None
                validator = _validator_of(response.headers)
                if validator:
                    validator_file.write_text(validator)
                else:
                    validator_file.unlink(missing_ok=True)
                _log(f"Downloading {url}\n  to {dest_file}")

            written = offset
            progress = _Progress(total, written, dest_file.name)
            try:
                with part.open(mode) as fh:
                    while True:
                        try:
                            chunk = response.read(chunk_size)
                        except http.client.IncompleteRead as exc:
                            # Keep what did arrive: the next run resumes after it.
                            fh.write(exc.partial)
                            written += len(exc.partial)
                            raise
                        if not chunk:
                            break
                        fh.write(chunk)
                        written += len(chunk)
                        progress.update(written)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(
                    f"The download of {url} was interrupted after {_human(written)}"
                    f"{f' of {_human(total)}' if total else ''}: {exc!r}.\n"
                    f"The partial file {part} is kept: re-run the same command to resume.\n"
                    f"{help_text}"
                ) from exc
            finally:
                progress.close()

        if total is not None and written < total:
            raise DownloadError(
                f"The connection closed after {written} of {total} bytes of {url}.\n"
                f"The partial file {part} is kept: re-run the same command to resume."
            )
        if total is not None and written > total:
            _reset(part, validator_file)
            raise DownloadError(
                f"Received {written} bytes of {url} but the server announced {total}; the file "
                "was deleted. Re-run to download it again."
            )
        break
    else:
        raise DownloadError(f"Could not resume or restart the download of {url}; delete {part}.")

    if expected is not None:
        try:
            actual = _check_sha256(part, expected, f"the download of {url}")
        finally:
            if not part.exists():
                validator_file.unlink(missing_ok=True)
    else:
        actual = _sha256_of(part)
    # Atomic: the final name only ever refers to a complete, verified file.
    os.replace(part, dest_file)
    validator_file.unlink(missing_ok=True)
    _log(f"Downloaded {dest_file} ({_human(dest_file.stat().st_size)}), sha256 {actual}")
    return dest_file


# --------------------------------------------------------------------------- extraction


def _is_unsafe_member(name: str, out: Path) -> bool:
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in posix.split("/"):
        return True
    root = out.resolve()
    return not (root / posix).resolve().is_relative_to(root)


def _safe_unzip(archive: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            # Check every name before writing anything, so a bad archive leaves no partial output.
            for member in members:
                if _is_unsafe_member(member.filename, out):
                    raise DownloadError(
                        f"Refusing to extract {archive}: member {member.filename!r} has an unsafe "
                        "path (absolute or containing '..') that could write outside the "
                        "destination folder. Nothing was extracted; this is not the expected "
                        "data set."
                    )
            out.mkdir(parents=True, exist_ok=True)
            zf.extractall(out)
    except zipfile.BadZipFile as exc:
        raise DownloadError(
            f"{archive} is not a valid zip file ({exc}). Delete it and re-run to download it "
            "again (or re-run with --force)."
        ) from exc


def _rar_commands(rar: Path, out: Path) -> list[tuple[str, list[str]]]:
    # unrar is the reference implementation; unar is free and reads RAR5; 7z/7zz need the
    # non-free RAR codec on Debian; bsdtar (libarchive) reads most RAR4/RAR5 files.
    return [
        ("unrar", ["x", "-o+", "-y", "-idq", str(rar), str(out) + os.sep]),
        ("unar", ["-q", "-f", "-o", str(out), str(rar)]),
        ("7z", ["x", "-y", f"-o{out}", str(rar)]),
        ("7zz", ["x", "-y", f"-o{out}", str(rar)]),
        ("bsdtar", ["-xf", str(rar), "-C", str(out)]),
    ]


def _rar_help(shown: str, archive: Path, dest: Path) -> str:
    return (
        "Install one of these Debian packages, then re-run the command (the downloaded archive "
        "is kept and reused):\n"
        "  apt-get install unar               # recommended: free, reads RAR4 and RAR5\n"
        "  apt-get install 7zip 7zip-rar      # or p7zip-full p7zip-rar (RAR codec is non-free)\n"
        "  apt-get install libarchive-tools   # provides bsdtar\n"
        f"Or by hand: unzip {archive}, extract {shown!r} with any tool that reads RAR, and move "
        f"its Positive/ and Negative/ folders to {dest / 'Positive'} and {dest / 'Negative'}."
    )


def _unrar(rar: Path, out: Path, shown: str, archive: Path, dest: Path) -> None:
    failures: list[str] = []
    for tool, args in _rar_commands(rar, out):
        exe = shutil.which(tool)
        if exe is None:
            continue
        # A tool that failed half-way must not leave files for the next one to trip over.
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        _log(f"Extracting {shown} with {tool} ...")
        proc = subprocess.run(
            [exe, *args],
            stdin=subprocess.DEVNULL,  # never wait on a password or overwrite prompt
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
        if proc.returncode == 0:
            return
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        failures.append(f"  {tool} exited with status {proc.returncode}: {tail}")
    if failures:
        raise DownloadError(
            f"{shown} is a RAR archive and every RAR tool found failed to extract it:\n"
            + "\n".join(failures)
            + "\n"
            + _rar_help(shown, archive, dest)
        )
    raise DownloadError(
        f"{shown} is a RAR archive and no tool to extract it was found on PATH "
        f"(tried {', '.join(tool for tool, _ in _rar_commands(rar, out))}).\n"
        + _rar_help(shown, archive, dest)
    )


def _is_rar(path: Path) -> bool:
    if path.suffix.lower() == ".rar":
        return True
    with path.open("rb") as fh:
        return fh.read(len(_RAR_MAGIC)) == _RAR_MAGIC


def _unpack(path: Path, out: Path, shown: str, archive: Path, dest: Path) -> None:
    if zipfile.is_zipfile(path):
        _safe_unzip(path, out)
    elif _is_rar(path):
        _unrar(path, out, shown, archive, dest)
    else:
        raise DownloadError(f"{shown} is neither a zip nor a RAR archive; cannot extract it.")


def _find_class_root(base: Path) -> tuple[Path, dict[str, str]] | None:
    """The shallowest folder under `base` holding both class folders (any letter case)."""
    best: tuple[int, Path, dict[str, str]] | None = None
    for dirpath, dirnames, _files in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in _FOLDER_JUNK]
        by_lower = {d.lower(): d for d in dirnames}
        found = {c: by_lower[c.lower()] for c in CLASS_FOLDERS if c.lower() in by_lower}
        if len(found) == len(CLASS_FOLDERS):
            depth = len(Path(dirpath).relative_to(base).parts)
            if best is None or depth < best[0]:
                best = (depth, Path(dirpath), found)
    return None if best is None else (best[1], best[2])


def _move_class_folder(src: Path, target: Path) -> int:
    """Move `src` to `target`; merge file by file if `target` exists. Returns files kept as-is."""
    if not target.exists():
        shutil.move(str(src), str(target))
        return 0
    if not target.is_dir():
        raise DownloadError(f"{target} exists and is not a folder; move it away and re-run.")
    kept = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        to = target / path.relative_to(src)
        if to.exists():
            # Existing images in DEST are never overwritten, whatever the archive holds.
            kept += 1
            continue
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(to))
    return kept


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip or RAR data set archive so that dest/Positive and dest/Negative exist."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DownloadError(f"Archive {archive} does not exist.")
    dest.mkdir(parents=True, exist_ok=True)
    # Staging inside dest keeps the final moves on one file system, i.e. cheap renames.
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        top = staging / "archive"
        _log(f"Extracting {archive} ...")
        _unpack(archive, top, archive.name, archive, dest)
        done: set[Path] = set()
        found = _find_class_root(staging)
        for _level in range(_MAX_NESTING):
            if found is not None:
                break
            nested = sorted(
                p
                for p in staging.rglob("*")
                if p.is_file() and p.suffix.lower() in _ARCHIVE_SUFFIXES and p not in done
            )
            if not nested:
                break
            for inner in nested:
                done.add(inner)
                shown = f"{inner.relative_to(top).as_posix()} (inside {archive.name})"
                _unpack(inner, inner.with_name(inner.name + ".extracted"), shown, archive, dest)
            found = _find_class_root(staging)
        if found is None:
            listing = sorted(p.relative_to(top).as_posix() for p in top.iterdir())[:10]
            raise DownloadError(
                f"No Positive/ and Negative/ folders were found in {archive} (top level: "
                f"{', '.join(listing) or 'empty'}). It is not the expected data set; delete it "
                "and re-run, or check --url."
            )
        root, names = found
        for folder in CLASS_FOLDERS:
            kept = _move_class_folder(root / names[folder], dest / folder)
            if kept:
                _log(f"Kept {kept} files already in {dest / folder} (not overwritten).")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- data set


def _iter_images(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            yield path


def count_images(dest: str | Path) -> dict[str, int]:
    """Number of image files under each class folder of `dest`."""
    return {folder: sum(1 for _ in _iter_images(Path(dest) / folder)) for folder in CLASS_FOLDERS}


def _is_extracted(dest: Path) -> bool:
    return all(any(_iter_images(dest / folder)) for folder in CLASS_FOLDERS)


def _archive_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name if name and name not in {".", ".."} else "dataset.zip"


def _report(dest: Path, counts: dict[str, int]) -> None:
    for folder in CLASS_FOLDERS:
        print(f"{folder}: {counts[folder]} images in {dest / folder}")


def fetch_dataset(
    dest: str | Path,
    url: str = DEFAULT_URL,
    sha256: str | None = KNOWN_SHA256,
    force: bool = False,
    keep_archive: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download and extract the data set so that dest/Positive and dest/Negative exist."""
    dest = Path(dest).expanduser()
    if not force and _is_extracted(dest):
        print(f"The data set is already in {dest}; nothing to do (--force downloads it again).")
        _report(dest, count_images(dest))
        return dest

    archive = dest / DOWNLOAD_DIRNAME / _archive_name(url)
    if force:
        # A redo must not trust an earlier archive: it may be the reason for the redo.
        _reset(
            archive,
            archive.with_name(archive.name + ".part"),
            archive.with_name(archive.name + ".part.validator"),
        )
    download(url, archive, sha256=sha256, timeout=timeout)
    extract(archive, dest)
    if not keep_archive:
        archive.unlink(missing_ok=True)
        # rmdir fails when other files live there, and then they must stay.
        with contextlib.suppress(OSError):
            archive.parent.rmdir()

    counts = count_images(dest)
    _report(dest, counts)
    empty = [folder for folder, n in counts.items() if n == 0]
    if empty:
        raise DownloadError(
            f"Extraction finished but {', '.join(empty)} under {dest} holds no images; the "
            "archive is not the expected data set."
        )
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: fetch the data set and return the exit status (1 on error)."""
    parser = argparse.ArgumentParser(
        prog="python -m crackdet.data.download",
        description=(
            "Download 'Concrete Crack Images for Classification' (Mendeley Data 5y9wdsg2zt v2, "
            "CC BY 4.0) and extract it into DEST/Positive and DEST/Negative."
        ),
    )
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help=f"data folder (default: {DEFAULT_DEST})"
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="archive URL (default: %(default)s)")
    parser.add_argument(
        "--sha256",
        default=None,
        help="expected SHA-256 of the archive (default: KNOWN_SHA256 for the default URL, unset)",
    )
    parser.add_argument(
        "--keep-archive",
        action="store_true",
        help="keep DEST/.download/<archive> after a successful extraction",
    )
    parser.add_argument(
        "--force", action="store_true", help="download and extract again even if DEST is complete"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="socket timeout in seconds"
    )
    args = parser.parse_args(argv)
    sha256 = (
        args.sha256
        if args.sha256 is not None
        else (KNOWN_SHA256 if args.url == DEFAULT_URL else None)
    )
    try:
        fetch_dataset(
            args.dest,
            url=args.url,
            sha256=sha256,
            force=args.force,
            keep_archive=args.keep_archive,
            timeout=args.timeout,
        )
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume the download.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
