"""Fetching a URL to a file with resume: a `.part` file continued by HTTP range requests."""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

import crackdet
from crackdet.data.download.messages import (
    LANDING_PAGE,
    DownloadError,
    data_dir_for,
    human_size,
    log,
    manual_steps,
)
from crackdet.data.download.verify import check_sha256, normalise_sha256, sha256_of

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_TIMEOUT = 30.0

_USER_AGENT = f"crackdet-download/{getattr(crackdet, '__version__', '0')} (python-urllib)"


@contextmanager
def byte_progress(total: int | None, done: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of bytes on stderr; yields the function that moves it to a count."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(label, total=total, completed=done)
        yield lambda count: progress.update(task, completed=count)


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


def remove_files(*paths: Path) -> None:
    """Delete each file that exists."""
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
    expected = normalise_sha256(sha256)
    help_text = manual_steps(url, dest_file, data_dir_for(dest_file))

    if dest_file.is_file():
        # Only complete downloads are ever renamed to the final name, so the file is trusted
        # (after its checksum, when one is known) and the network is not touched.
        if expected is not None:
            check_sha256(dest_file, expected, str(dest_file))
        log(f"Using the archive already downloaded: {dest_file}")
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
                log(f"Partial download {part.name} does not match the server's file; restarting.")
                remove_files(part, validator_file)
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
                    log(f"The server resumed at byte {start}, not {offset}; restarting.")
                    remove_files(part, validator_file)
                    continue
                mode = "ab"
                log(f"Resuming {dest_file.name} at {human_size(offset)}")
            else:
                if offset:
                    log(
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
                log(f"Downloading {url}\n  to {dest_file}")

            written = offset
            with byte_progress(total, written, dest_file.name) as show:
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
                            show(written)
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(
                        f"The download of {url} was interrupted after {human_size(written)}"
                        f"{f' of {human_size(total)}' if total else ''}: {exc!r}.\n"
                        f"The partial file {part} is kept: re-run the same command to resume.\n"
                        f"{help_text}"
                    ) from exc

        if total is not None and written < total:
            raise DownloadError(
                f"The connection closed after {written} of {total} bytes of {url}.\n"
                f"The partial file {part} is kept: re-run the same command to resume."
            )
        if total is not None and written > total:
            remove_files(part, validator_file)
            raise DownloadError(
                f"Received {written} bytes of {url} but the server announced {total}; the file "
                "was deleted. Re-run to download it again."
            )
        break
    else:
        raise DownloadError(f"Could not resume or restart the download of {url}; delete {part}.")

    if expected is not None:
        try:
            actual = check_sha256(part, expected, f"the download of {url}")
        finally:
            if not part.exists():
                validator_file.unlink(missing_ok=True)
    else:
        actual = sha256_of(part)
    # Atomic: the final name only ever refers to a complete, verified file.
    os.replace(part, dest_file)
    validator_file.unlink(missing_ok=True)
    log(f"Downloaded {dest_file} ({human_size(dest_file.stat().st_size)}), sha256 {actual}")
    return dest_file
