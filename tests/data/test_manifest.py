"""The split manifest: what it records, where, and how a folder is matched against it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only

from crackdet.data.datamodule import CrackDataModule
from crackdet.data.manifest import (
    COLUMNS,
    MANIFEST_NAME,
    SplitManifest,
    list_digest,
    manifest_of_checkpoint,
    match_folder,
)
from crackdet.data.scan import FINGERPRINT, ImageRecord, scan_folder
from crackdet.errors import DataError

CLASSES = {"negative": ["Negative"], "positive": ["Positive"]}


def stratified(data_dir: Path, **kwargs) -> CrackDataModule:
    kwargs = {"image_size": 32, "num_workers": 0, "split": "stratified", **kwargs}
    dm = CrackDataModule(str(data_dir), **kwargs)
    dm.setup("fit")
    return dm


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_manifest_lists_every_image_with_class_split_and_fingerprint(image_folder) -> None:
    root = image_folder(n_per_class=10)
    dm = stratified(root)
    manifest = dm.manifest
    by_path = {e.path: e for e in manifest.entries}
    assert len(by_path) == 20
    for name, records in dm.splits.items():
        for record in records:
            entry = by_path[Path(record.path).relative_to(root).as_posix()]
            assert (entry.split, entry.label, entry.fingerprint) == (
                name,
                record.label,
                record.digest,
            )
    assert manifest.counts() == {name: len(records) for name, records in dm.splits.items()}


def test_manifest_round_trips_through_csv_and_plain_checkpoint_state(
    image_folder, tmp_path: Path
) -> None:
    root = image_folder(n_per_class=4)
    (root / "Positive" / "odd, name\n.jpg").write_bytes(
        (root / "Positive" / "00000.jpg").read_bytes()
    )
    manifest = stratified(root).manifest
    path = tmp_path / MANIFEST_NAME
    path.write_text(manifest.csv_text())
    rows = read_rows(path)
    assert tuple(rows[0]) == COLUMNS
    assert {r["class"] for r in rows} == {"positive", "negative"}
    assert "Positive/odd, name\n.jpg" in {r["path"] for r in rows}
    assert SplitManifest.read_csv(path).entries == manifest.entries
    # Plain lists and strings: a weights_only load reads it back.
    torch.save({"CrackDataModule": {"split_manifest": manifest.to_state()}}, tmp_path / "x.ckpt")
    assert manifest_of_checkpoint(tmp_path / "x.ckpt").entries == manifest.entries
    assert manifest.to_state()["fingerprint"] == FINGERPRINT == "blake2b-128"


def test_list_digest_names_the_files_and_their_bytes_not_their_order() -> None:
    items = [("Positive/a.jpg", "11"), ("Negative/b.jpg", "22")]
    assert list_digest(items) == list_digest(items[::-1])
    assert list_digest(items) != list_digest([("Positive/a.jpg", "11"), ("Negative/b.jpg", "23")])
    assert list_digest(items) != list_digest(items[:1])


def test_match_names_missing_changed_reclassed_unreadable_and_new_files(tmp_path: Path) -> None:
    def record(path: str, label: int, digest: str) -> ImageRecord:
        return ImageRecord(str(tmp_path / path), label, digest)

    trained = [
        record("Positive/kept.jpg", 1, "a"),
        record("Positive/gone.jpg", 1, "b"),
        record("Positive/edited.jpg", 1, "c"),
        record("Negative/moved.jpg", 0, "d"),
        record("Negative/broken.jpg", 0, "e"),
    ]
    manifest = SplitManifest.from_splits({"test": trained}, tmp_path)
    now = [
        record("Positive/kept.jpg", 1, "a"),
        record("Positive/edited.jpg", 1, "X"),
        record("Negative/moved.jpg", 1, "d"),
        record("Positive/added.jpg", 1, "f"),
    ]
    bad = [(str(tmp_path / "Negative/broken.jpg"), "OSError: truncated")]
    match = match_folder(manifest, now, bad, tmp_path)
    assert [Path(r.path).name for r in match.splits["test"]] == ["kept.jpg"]
    assert match.missing["test"] == ["Positive/gone.jpg"]
    assert dict(match.changed["test"]) == {
        "Negative/broken.jpg": "now unreadable: OSError: truncated",
        "Negative/moved.jpg": "now class positive, was negative",
        "Positive/edited.jpg": "different content",
    }
    assert match.new == ["Positive/added.jpg"] and match.problems("test") == 4
    assert "1 missing: Positive/gone.jpg" in match.report("test")


def test_a_training_run_writes_the_manifest_beside_its_checkpoints_and_in_them(trained_run):
    from_csv = SplitManifest.read_csv(trained_run / MANIFEST_NAME)
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(trained_run / "checkpoints" / name, weights_only=True)
        state = checkpoint["CrackDataModule"]["split_manifest"]
        assert SplitManifest.from_state(state).entries == from_csv.entries
    tested = [Path(r["path"]) for r in read_rows(trained_run / "predictions_test.csv")]
    data_dir = tested[0].parents[1]
    assert sorted(p.relative_to(data_dir).as_posix() for p in tested) == [
        e.path for e in from_csv.split("test")
    ]
    assert len(from_csv.entries) == len(scan_folder(data_dir, CLASSES).records)


def test_only_rank_zero_writes_the_manifest(image_folder, tmp_path: Path, monkeypatch) -> None:
    root = image_folder(n_per_class=4)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    stratified(root, output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run" / MANIFEST_NAME).exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    stratified(root, output_dir=str(tmp_path / "run"))
    assert (tmp_path / "run" / MANIFEST_NAME).is_file()


def test_a_run_directory_with_another_split_is_never_overwritten(
    image_folder, tmp_path: Path
) -> None:
    root = image_folder(n_per_class=4)
    run = tmp_path / "run"
    first = stratified(root, output_dir=str(run))
    written = (run / MANIFEST_NAME).read_text()
    stratified(root, output_dir=str(run))  # same images: resuming in place is fine
    (root / "Negative" / "00000.jpg").unlink()
    with pytest.raises(DataError, match=r"records another split.*1 removed \(Negative/00000"):
        stratified(root, output_dir=str(run))
    assert (run / MANIFEST_NAME).read_text() == written
    # Resuming from a checkpoint of the first split into a fresh directory is refused too.
    changed = stratified(root)
    with pytest.raises(DataError, match=r"1 removed \(Negative/00000.jpg\); \d+ in another split"):
        changed.load_state_dict(first.state_dict())
    first.load_state_dict(first.state_dict())  # the split it was trained on
