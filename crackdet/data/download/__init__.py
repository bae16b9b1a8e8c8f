"""Fetch the "Concrete Crack Images for Classification" data set into `<dest>/Positive|Negative`.

Usage: ``python -m crackdet.data.download [--dest DIR] [--url URL] [--sha256 HEX] [--keep-archive]
[--force] [--timeout S]``

The data set is Mendeley Data 5y9wdsg2zt, version 2 (Özgenel, CC BY 4.0): 40,000 227x227 RGB
images, 20,000 with a crack (`Positive/`) and 20,000 without (`Negative/`).

- `fetch`: a URL to a file, resumable through a `.part` file and HTTP range requests
- `verify`: SHA-256 and whether an archive left from an earlier run is whole
- `extract`: zip, RAR (external tools) and archives inside archives, into the class folders
- `dataset`: the whole job (DEST checked first, a file lock, download, extract, count)
- `cli`: the command line
"""

from crackdet.data.download.cli import main
from crackdet.data.download.dataset import (
    DEFAULT_DEST,
    DEFAULT_URL,
    KNOWN_SHA256,
    count_images,
    fetch_dataset,
)
from crackdet.data.download.extract import extract
from crackdet.data.download.fetch import download
from crackdet.data.download.messages import DestinationError, DownloadError

__all__ = [
    "DEFAULT_DEST",
    "DEFAULT_URL",
    "KNOWN_SHA256",
    "DestinationError",
    "DownloadError",
    "count_images",
    "download",
    "extract",
    "fetch_dataset",
    "main",
]
