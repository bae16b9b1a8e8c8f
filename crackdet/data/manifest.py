"""The split manifest: which image, with which content, was in which split of a training run."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crackdet.data.classes import CLASS_LABELS
from crackdet.data.scan import FINGERPRINT, ImageRecord, shown
from crackdet.errors import DataError

#: The manifest file every training run writes into its run directory.
MANIFEST_NAME = "split_manifest.csv"
#: Its columns: path relative to the data folder, class key, label, split, content fingerprint.
COLUMNS = ("path", "class", "label", "split", "fingerprint")
#: Where the manifest sits inside the data module's entry of a checkpoint.
STATE_KEY = "split_manifest"
#: The checkpoint entry Lightning stores the data module's state under (its class name).
DATAMODULE_KEY = "CrackDataModule"
SPLITS = ("train", "val", "test")
_CLASS_OF = {label: key for key, label in CLASS_LABELS.items()}
_LISTED = 5


@dataclass(frozen=True)
class ManifestEntry:
    """One image of a training run: path relative to the data folder, label, split, content."""

    path: str
    label: int
    split: str
    fingerprint: str


def relative_path(path: str | Path, data_dir: str | Path) -> str:
    """`path` relative to `data_dir`, with forward slashes (the same on every system)."""
    return Path(path).relative_to(Path(data_dir).expanduser()).as_posix()


def list_digest(items: Iterable[tuple[str, str]]) -> str:
    """A digest naming a list of images: BLAKE2b over its sorted `path<TAB>fingerprint` lines."""
    digest = hashlib.blake2b(digest_size=16)
    for path, print_ in sorted(items):
        digest.update(f"{path}\t{print_}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitManifest:
    """Every image a training run split, in path order; `source` says where it was read from."""

    entries: tuple[ManifestEntry, ...]
    source: str = ""

    @classmethod
    def from_splits(cls, splits: Mapping[str, Sequence[ImageRecord]], data_dir: str | Path):
        """The manifest of `splits` (records below `data_dir`)."""
        entries = [
            ManifestEntry(relative_path(r.path, data_dir), r.label, name, r.digest)
            for name in SPLITS
            for r in splits.get(name, ())
        ]
        return cls(tuple(sorted(entries, key=lambda e: e.path)))

    def split(self, name: str) -> list[ManifestEntry]:
        """The entries of split `name`."""
        return [e for e in self.entries if e.split == name]

    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        return {name: len(self.split(name)) for name in SPLITS}

    def digest(self, name: str) -> str:
        """`list_digest` of split `name`: equal digests mean the same files with the same bytes."""
        return list_digest((e.path, e.fingerprint) for e in self.split(name))

    def to_state(self) -> dict[str, Any]:
        """Plain lists and strings, so `torch.load(weights_only=True)` reads the checkpoint."""
        return {
            "fingerprint": FINGERPRINT,
            "path": [e.path for e in self.entries],
            "label": [e.label for e in self.entries],
            "split": [e.split for e in self.entries],
            "digest": [e.fingerprint for e in self.entries],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], source: str = "") -> SplitManifest:
        """The manifest `to_state` wrote."""
        _check_fingerprint(state.get("fingerprint"), source)
        columns = (state["path"], state["label"], state["split"], state["digest"])
        entries = (ManifestEntry(p, int(lab), s, d) for p, lab, s, d in zip(*columns, strict=True))
        return cls(tuple(entries), source)

    def csv_text(self) -> str:
        """The manifest as CSV (`COLUMNS`), one row per image."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(
            (e.path, _CLASS_OF[e.label], e.label, e.split, e.fingerprint) for e in self.entries
        )
        return buffer.getvalue()

    @classmethod
    def read_csv(cls, path: str | Path) -> SplitManifest:
        """The manifest in a `split_manifest.csv` file."""
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and set(COLUMNS) - set(rows[0]):
            raise DataError(f"{path} is not a split manifest: it needs the columns {COLUMNS}.")
        entries = (
            ManifestEntry(r["path"], int(r["label"]), r["split"], r["fingerprint"]) for r in rows
        )
        return cls(tuple(entries), str(path))


def differences(then: SplitManifest, now: SplitManifest) -> str:
    """What changed from one manifest to another ("" when nothing): counts and first names."""
    before = {e.path: e for e in then.entries}
    after = {e.path: e for e in now.entries}
    kinds = {
        "removed": sorted(before.keys() - after.keys()),
        "added": sorted(after.keys() - before.keys()),
        "changed": sorted(
            p
            for p in before.keys() & after.keys()
            if (before[p].fingerprint, before[p].label) != (after[p].fingerprint, after[p].label)
        ),
        "in another split": sorted(
            p for p in before.keys() & after.keys() if before[p].split != after[p].split
        ),
    }
    return "; ".join(
        f"{len(paths)} {kind} ("
        + ", ".join(shown(p) for p in paths[:_LISTED])
        + (" ...)" if len(paths) > _LISTED else ")")
        for kind, paths in kinds.items()
        if paths
    )


def _check_fingerprint(name: str | None, source: str) -> None:
    if name != FINGERPRINT:
        raise DataError(
            f"The split manifest in {source} uses fingerprint {name}; this version of crackdet "
            f"computes {FINGERPRINT}, so it cannot compare the files."
        )


def manifest_of_checkpoint(ckpt_path: str | Path) -> SplitManifest | None:
    """The training run's manifest: inside the checkpoint, else its run directory's CSV."""
    ckpt_path = Path(ckpt_path)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    state = (checkpoint.get(DATAMODULE_KEY) or {}).get(STATE_KEY)
    if state:
        return SplitManifest.from_state(state, source=str(ckpt_path))
    # Checkpoints live in <run>/checkpoints/; the manifest beside them in <run>/.
    for folder in (ckpt_path.parent.parent, ckpt_path.parent):
        if (folder / MANIFEST_NAME).is_file():
            return SplitManifest.read_csv(folder / MANIFEST_NAME)
    return None


@dataclass
class ManifestMatch:
    """The manifest's images found in a folder as it is now."""

    #: Per split, the manifest's images whose file is there with the same class and bytes.
    splits: dict[str, list[ImageRecord]]
    #: Per split, the manifest's images whose file is gone, as paths relative to the folder.
    missing: dict[str, list[str]]
    #: Per split, the manifest's images whose file has changed: (relative path, what changed).
    changed: dict[str, list[tuple[str, str]]]
    #: Files of the folder that the manifest does not list (relative paths): never evaluated.
    new: list[str] = field(default_factory=list)

    def problems(self, name: str) -> int:
        """How many images of split `name` are missing or changed."""
        return len(self.missing[name]) + len(self.changed[name])

    def report(self, name: str) -> str:
        """The missing and changed images of split `name`: counts and the first few names."""
        parts = []
        if self.missing[name]:
            parts.append(
                f"{len(self.missing[name])} missing: "
                + ", ".join(shown(p) for p in self.missing[name][:_LISTED])
                + (" ..." if len(self.missing[name]) > _LISTED else "")
            )
        if self.changed[name]:
            parts.append(
                f"{len(self.changed[name])} changed: "
                + ", ".join(f"{shown(p)} ({why})" for p, why in self.changed[name][:_LISTED])
                + (" ..." if len(self.changed[name]) > _LISTED else "")
            )
        return "; ".join(parts)

    def new_report(self) -> str:
        """The folder's files that are not in the manifest: count and the first few names."""
        names = ", ".join(shown(p) for p in self.new[:_LISTED])
        return f"{len(self.new)} ({names}{' ...' if len(self.new) > _LISTED else ''})"


def match_folder(
    manifest: SplitManifest,
    records: Sequence[ImageRecord],
    bad_files: Sequence[tuple[str, str]],
    data_dir: str | Path,
) -> ManifestMatch:
    """Find each manifest image in the scanned folder, by relative path, class and fingerprint."""
    present = {relative_path(r.path, data_dir): r for r in records}
    unreadable = {relative_path(p, data_dir): why for p, why in bad_files}
    match = ManifestMatch(
        splits={n: [] for n in SPLITS},
        missing={n: [] for n in SPLITS},
        changed={n: [] for n in SPLITS},
    )
    for entry in manifest.entries:
        record = present.get(entry.path)
        if entry.path in unreadable:
            match.changed[entry.split].append(
                (entry.path, f"now unreadable: {unreadable[entry.path]}")
            )
        elif record is None:
            match.missing[entry.split].append(entry.path)
        elif record.digest != entry.fingerprint:
            match.changed[entry.split].append((entry.path, "different content"))
        elif record.label != entry.label:
            match.changed[entry.split].append(
                (entry.path, f"now class {_CLASS_OF[record.label]}, was {_CLASS_OF[entry.label]}")
            )
        else:
            match.splits[entry.split].append(record)
    listed = {e.path for e in manifest.entries}
    match.new = sorted(p for p in (*present, *unreadable) if p not in listed)
    return match
