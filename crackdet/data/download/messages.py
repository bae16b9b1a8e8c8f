"""What the download job tells the user: its error type, progress lines and the manual steps."""

from __future__ import annotations

import sys
from pathlib import Path

LANDING_PAGE = "https://data.mendeley.com/datasets/5y9wdsg2zt/2"
#: Folder of DEST holding the archive and its partial download.
DOWNLOAD_DIRNAME = ".download"


class DownloadError(Exception):
    """The data set could not be downloaded, verified or extracted; the message says what to do."""


class DestinationError(DownloadError):
    """--dest cannot be written; found before anything is downloaded."""


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the result: the image counts)."""
    print(message, file=sys.stderr, flush=True)


def manual_steps(url: str, archive: Path, data_dir: Path) -> str:
    """How to get the data set by hand when the download cannot be done from here."""
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


def data_dir_for(archive: Path) -> Path:
    """The data folder an archive belongs to, to name it in the help text."""
    # Archives live in <dest>/.download/ when called from fetch_dataset.
    parent = archive.parent
    return parent.parent if parent.name == DOWNLOAD_DIRNAME else parent


def human_size(n: float) -> str:
    """A byte count as B / KB / MB / GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
