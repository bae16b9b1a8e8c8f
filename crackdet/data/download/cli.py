"""`python -m crackdet.data.download`: the command line of the data set download."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from crackdet.data.download.dataset import DEFAULT_DEST, DEFAULT_URL, KNOWN_SHA256, fetch_dataset
from crackdet.data.download.fetch import DEFAULT_TIMEOUT
from crackdet.data.download.messages import DestinationError, DownloadError


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: fetch the data set; exit status 0, 1 on error, 2 when --dest is unwritable."""
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
    except DestinationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume the download.", file=sys.stderr)
        return 130
    return 0
