"""Extracting the data set archive: a zip, a RAR (through an external tool) or one inside another.

Mendeley serves the data set as a zip that, as far as we know, holds a single RAR file with the
two folders; nothing here relies on that layout: the folders are searched for anywhere in the zip
and in any zip or RAR inside it. No pure-Python reader handles RAR5, so RAR files go to the first
of unrar, unar, 7z, 7zz or bsdtar that is installed and works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from crackdet.data.download.messages import DownloadError, log
from crackdet.data.download.verify import is_rar

CLASS_FOLDERS = ("Positive", "Negative")

_ARCHIVE_SUFFIXES = (".zip", ".rar")
# The data set is a zip holding a rar; one more level absorbs a re-packaging without looping forever.
_MAX_NESTING = 3
_FOLDER_JUNK = {"__MACOSX"}


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
        log(f"Extracting {shown} with {tool} ...")
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


def _unpack(path: Path, out: Path, shown: str, archive: Path, dest: Path) -> None:
    if zipfile.is_zipfile(path):
        _safe_unzip(path, out)
    elif is_rar(path):
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
        log(f"Extracting {archive} ...")
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
                log(f"Kept {kept} files already in {dest / folder} (not overwritten).")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
