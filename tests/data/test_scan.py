"""Checking the data folder: content-keyed scan cache, class folders, symbolic links, bad files."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crackdet.data.datamodule import CrackDataModule
from crackdet.data.scan import check_data_dir, fingerprint, scan_folder
from crackdet.errors import DataError

CLASSES = {"negative": ["Negative"], "positive": ["Positive"]}


def setup_all(data_dir: Path, **kwargs) -> CrackDataModule:
    dm = CrackDataModule(str(data_dir), image_size=32, num_workers=0, split="all", **kwargs)
    dm.setup()
    return dm


def replace_keeping_size_and_mtime(target: Path, data: bytes) -> None:
    """What `cp -p`, `rsync -t` or a restore from backup does: other bytes, same size and mtime."""
    before = target.stat()
    assert len(data) == before.st_size
    target.write_bytes(data)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_mtime_ns == before.st_mtime_ns


# --- fingerprints and the scan cache --------------------------------------------------------


def test_fingerprint_is_blake2b_of_the_file_bytes(image_folder) -> None:
    root = image_folder(n_per_class=2)
    records = scan_folder(root, CLASSES).records
    for record in records:
        expected = hashlib.blake2b(Path(record.path).read_bytes(), digest_size=16).hexdigest()
        assert record.digest == fingerprint(Path(record.path).read_bytes()) == expected
    shutil.copy(records[0].path, root / "Negative" / "copy.jpg")
    copy = next(r for r in scan_folder(root, CLASSES).records if r.path.endswith("copy.jpg"))
    assert copy.digest == records[0].digest


def bmp_bytes(seed: int, size: int = 16) -> bytes:
    """An uncompressed image: same pixel size, same file size, whatever the pixels."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


def test_scan_cache_rereads_a_file_replaced_with_the_same_size_and_mtime(
    image_folder, tmp_path: Path
) -> None:
    root = image_folder(n_per_class=2)
    target = root / "Positive" / "photo.bmp"
    target.write_bytes(bmp_bytes(seed=1))
    cache = tmp_path / "cache"
    assert fingerprint(bmp_bytes(seed=1)) in {
        r.digest for r in scan_folder(root, CLASSES, cache).records
    }
    # Another image with the same size and modification time gets its own fingerprint...
    replace_keeping_size_and_mtime(target, bmp_bytes(seed=2))
    again = scan_folder(root, CLASSES, cache).records
    assert next(r.digest for r in again if r.path == str(target)) == fingerprint(bmp_bytes(seed=2))
    # ...and a corrupt one is found, not vouched for by the cache.
    replace_keeping_size_and_mtime(target, b"\x00" * len(bmp_bytes(seed=2)))
    bad = scan_folder(root, CLASSES, cache).bad_files
    assert [p for p, _ in bad] == [str(target)]


def test_scan_cache_decodes_each_content_once(image_folder, tmp_path: Path, monkeypatch) -> None:
    import crackdet.data.scan as scan

    root = image_folder(n_per_class=3)
    scan_folder(root, CLASSES, tmp_path / "cache")
    decoded = []
    monkeypatch.setattr(scan, "check_decodes", lambda data: decoded.append(data))
    assert len(scan_folder(root, CLASSES, tmp_path / "cache").records) == 6
    assert decoded == []  # unchanged files: read and fingerprinted, not decoded again
    (root / "Negative" / "00000.jpg").write_bytes((root / "Positive" / "00000.jpg").read_bytes())
    (root / "Negative" / "new.jpg").write_bytes(b"new bytes")
    scan_folder(root, CLASSES, tmp_path / "cache")
    assert decoded == [b"new bytes"]  # a copy of a known image needs no decoding either


# --- class folders --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes,message",
    [
        ({"negative": ["Positive"], "positive": ["Positive"]}, "are the same folder"),
        ({"negative": ["Negative"], "positive": ["Positive", "Positive"]}, "are the same folder"),
        ({"negative": ["Negative", "."], "positive": ["Positive"]}, "overlap"),
        ({"negative": ["Negative"], "positive": ["Positive", "Positive/sub"]}, "overlap"),
    ],
)
def test_a_folder_feeding_two_classes_or_twice_is_refused(image_folder, classes, message) -> None:
    root = image_folder(n_per_class=2)
    (root / "Positive" / "sub").mkdir()
    shutil.copy(root / "Positive" / "00000.jpg", root / "Positive" / "sub" / "a.jpg")
    with pytest.raises(DataError, match=message):
        setup_all(root, classes=classes)


def test_a_linked_folder_that_is_another_class_folder_is_refused(image_folder) -> None:
    root = image_folder(n_per_class=2)
    (root / "Cracked").symlink_to(root / "Positive")
    with pytest.raises(
        DataError, match=r"negative Positive and data.classes.positive Cracked are the same"
    ):
        setup_all(root, classes={"negative": ["Positive"], "positive": ["Cracked"]})


def test_every_missing_or_empty_folder_is_named_in_one_error(image_folder) -> None:
    root = image_folder(n_per_class=2)
    (root / "Empty").mkdir()
    (root / "Hidden").mkdir()
    (root / "Hidden" / ".DS_Store").write_bytes(b"\0")
    classes = {"negative": ["Negative", "Empty", "Gone"], "positive": ["Positive", "Hidden"]}
    with pytest.raises(DataError) as info:
        check_data_dir(root, classes)
    message = str(info.value)
    assert "no Gone/ folder (data.classes.negative" in message
    assert f"{root / 'Empty'} is empty" in message and f"{root / 'Hidden'} is empty" in message


# --- symbolic links -------------------------------------------------------------------------


def test_linked_folders_and_images_are_followed_and_counted(image_folder, caplog) -> None:
    root = image_folder(n_per_class=2)
    elsewhere = image_folder(n_per_class=3, name="other_disk")
    (root / "Positive" / "site_b").symlink_to(elsewhere / "Positive", target_is_directory=True)
    (root / "Negative" / "linked.jpg").symlink_to(elsewhere / "Negative" / "00000.jpg")
    caplog.set_level("INFO")
    dm = setup_all(root)
    names = sorted(Path(r.path).relative_to(root).as_posix() for r in dm.splits["test"])
    assert len(names) == 2 + 2 + 3 + 1
    assert "Positive/site_b/00002.jpg" in names and "Negative/linked.jpg" in names
    assert "Followed 2 symbolic link(s)" in caplog.text


def test_linked_class_folders_are_followed(image_folder) -> None:
    elsewhere = image_folder(n_per_class=2, name="other_disk")
    root = Path(elsewhere).parent / "linked"
    root.mkdir()
    for name in ("Positive", "Negative"):
        (root / name).symlink_to(elsewhere / name, target_is_directory=True)
    assert len(setup_all(root).splits["test"]) == 4


def test_dangling_links_are_named(image_folder, tmp_path: Path) -> None:
    root = image_folder(n_per_class=2)
    (root / "Positive" / "moved.jpg").symlink_to(tmp_path / "no_longer_here.jpg")
    with pytest.raises(DataError, match=r"moved.jpg: broken symbolic link to .*no_longer_here"):
        setup_all(root)
    dm = setup_all(root, on_bad_image="skip", output_dir=str(tmp_path / "run"))
    assert len(dm.splits["test"]) == 4
    assert "moved.jpg" in (tmp_path / "run" / "bad_files.txt").read_text()


def test_a_link_into_the_other_class_or_a_loop_never_counts_a_file_twice(
    image_folder, caplog
) -> None:
    root = image_folder(n_per_class=2)
    (root / "Positive" / "loop").symlink_to(root / "Positive", target_is_directory=True)
    dm = setup_all(root)
    assert len(dm.splits["test"]) == 4
    assert "lead to a folder already listed" in caplog.text and "loop" in caplog.text
    (root / "Positive" / "borrowed").symlink_to(root / "Negative", target_is_directory=True)
    with pytest.raises(
        DataError,
        match=r"(?s)reached by more than one.*Negative/00000.jpg and .*borrowed/00000.jpg are one",
    ):
        setup_all(root)


# --- bad files ------------------------------------------------------------------------------


def test_bad_files_list_quotes_odd_names_and_gives_the_decoders_reason(
    image_folder, tmp_path: Path
) -> None:
    root = image_folder(n_per_class=2)
    odd = ["line\nbreak.jpg", "tab\there.jpg", 'quote".jpg']
    for name in odd:
        (root / "Negative" / name).write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        setup_all(root)
    assert "\nbreak.jpg" not in str(info.value)  # one line per file, even for this name
    assert "line\\nbreak.jpg" in str(info.value)
    setup_all(root, on_bad_image="skip", output_dir=str(tmp_path / "run"))
    with open(tmp_path / "run" / "bad_files.txt", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(odd)
    for row in rows:
        assert row["reason"] == "UnidentifiedImageError: cannot identify image file"
        assert "BytesIO" not in row["reason"]


def _photo_bytes(**save) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (227, 227, 3), dtype=np.uint8)
    pixels[100:110] = 20  # a dark band: something for the compression to describe
    image = Image.fromarray(pixels)
    if save.pop("cmyk", False):
        image = image.convert("CMYK")
    out = io.BytesIO()
    image.save(out, format="JPEG", **save)
    return out.getvalue()


@pytest.mark.parametrize(
    "save", [{"quality": 90}, {"quality": 75, "progressive": True}, {"cmyk": True}]
)
def test_the_scans_quick_jpeg_check_fails_exactly_where_a_full_decode_does(save) -> None:
    from crackdet.data.images import check_decodes, decode_rgb
    from crackdet.data.scan import decode_failure

    def outcome(check, data: bytes) -> str | None:
        try:
            check(data)
        except Exception as exc:
            return decode_failure(exc)
        return None

    good = _photo_bytes(**save)
    damaged = [good[:n] for n in (len(good) // 10, len(good) // 2, len(good) - 300, len(good) - 2)]
    for at in (len(good) // 3, len(good) // 2, 2 * len(good) // 3):
        damaged.append(good[:at] + b"\xff\xd9" + good[at + 2 :])  # an end marker mid-stream
        damaged.append(good[:at] + bytes(400) + good[at + 400 :])  # zeroed bytes
    outcomes = [(outcome(decode_rgb, d), outcome(check_decodes, d)) for d in [good, *damaged]]
    assert outcomes[0] == (None, None)
    assert all(full == quick for full, quick in outcomes), outcomes
    assert sum(full is not None for full, _ in outcomes) >= 3  # the cut-short files fail
