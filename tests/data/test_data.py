"""The DataModule: scanning, labels, both split modes, duplicates, bad input and odd images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from crackdet.cli.config import CONFIG_DIR
from crackdet.data.datamodule import CrackDataModule
from crackdet.data.scan import ImageRecord, scan_folder
from crackdet.data.splits import reference_split, stratified_split
from crackdet.data.transforms import train_transform
from crackdet.errors import ConfigError, DataError
from tests.conftest import REAL_SAMPLE, needs_real_sample


def datamodule(data_dir: Path, **kwargs) -> CrackDataModule:
    """A data module with test-friendly defaults (tiny images, no worker processes)."""
    kwargs = {"image_size": 32, "batch_size": 4, "num_workers": 0, **kwargs}
    dm = CrackDataModule(str(data_dir), **kwargs)
    dm.setup("fit")
    return dm


def fake_records(n_per_class: int) -> list[ImageRecord]:
    return [
        ImageRecord(f"/d/{cls}/{i:05d}.jpg", label, f"{cls}{i}")
        for cls, label in (("Positive", 1), ("Negative", 0))
        for i in range(n_per_class)
    ]


# --- splits -----------------------------------------------------------------------------------


def test_reference_split_matches_the_notebook_on_the_full_data_set_size() -> None:
    splits = reference_split(fake_records(20_000))
    assert len(splits["train"]) == 30_000 and len(splits["val"]) == 10_000
    assert splits["test"] == []
    # Interleaved, positive first, each class in sorted name order.
    head = splits["train"][:4]
    assert [r.label for r in head] == [1, 0, 1, 0]
    assert head[0].path.endswith("Positive/00000.jpg") and head[2].path.endswith(
        "Positive/00001.jpg"
    )
    assert splits["val"][-1].path.endswith("Negative/19999.jpg")
    assert sum(r.label for r in splits["val"]) == 5_000


def test_stratified_split_sizes_labels_and_seed() -> None:
    records = fake_records(100)
    splits, groups = stratified_split(records, [0.7, 0.15, 0.15], seed=1)
    assert groups == 0
    assert {k: len(v) for k, v in splits.items()} == {"train": 140, "val": 30, "test": 30}
    for name, expected in (("train", 70), ("val", 15), ("test", 15)):
        assert sum(r.label for r in splits[name]) == expected
    assert {r.path for s in splits.values() for r in s} == {r.path for r in records}
    again, _ = stratified_split(records, [0.7, 0.15, 0.15], seed=1)
    other, _ = stratified_split(records, [0.7, 0.15, 0.15], seed=2)
    assert again == splits
    assert other["test"] != splits["test"]


@pytest.mark.parametrize("fractions", [[0.7, 0.2, 0.2], [0.5, 0.5], [1.2, -0.1, -0.1]])
def test_stratified_split_rejects_bad_fractions(fractions: list[float]) -> None:
    with pytest.raises(ConfigError, match="data.fractions"):
        stratified_split(fake_records(5), fractions, seed=0)


def test_duplicates_never_straddle_splits(image_folder) -> None:
    root = image_folder(n_per_class=30, size=32)
    # Ten files of each class get a byte-identical twin under another name.
    for cls in ("Positive", "Negative"):
        for i in range(10):
            shutil.copy(root / cls / f"{i:05d}.jpg", root / cls / f"dup_{i:05d}.jpg")
    dm = datamodule(root, split="stratified", fractions=[0.6, 0.2, 0.2], split_seed=3)
    assert dm.n_duplicate_groups == 20
    side = {}
    for name, records in dm.splits.items():
        for record in records:
            assert side.setdefault(record.digest, name) == name, f"{record.path} straddles splits"
    assert sum(len(v) for v in dm.splits.values()) == 80


@needs_real_sample
def test_real_sample_duplicates_stay_on_one_side() -> None:
    dm = datamodule(REAL_SAMPLE, split="stratified")
    assert dm.n_duplicate_groups == 40  # the sample's README: 20 duplicate pairs per class
    owner = {}
    for name, records in dm.splits.items():
        for record in records:
            assert owner.setdefault(record.digest, name) == name
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sum(sizes.values()) == 2000
    assert abs(sizes["test"] - 300) <= 2 and abs(sizes["val"] - 300) <= 2


def test_reference_split_on_a_folder_labels_by_folder(image_folder) -> None:
    dm = datamodule(image_folder(n_per_class=8), split="seed")
    assert len(dm.splits["train"]) == 12 and len(dm.splits["val"]) == 4
    for records in dm.splits.values():
        for record in records:
            assert record.label == (1 if "/Positive/" in record.path else 0)
    assert not dm.has_split("test")


def test_class_folders_are_configurable(image_folder) -> None:
    root = image_folder(n_per_class=4)
    (root / "Positive").rename(root / "cracked")
    (root / "Negative").rename(root / "intact")
    dm = datamodule(root, classes={"positive": ["cracked"], "negative": ["intact"]}, split="all")
    labels = {Path(r.path).parent.name: r.label for r in dm.splits["test"]}
    assert labels == {"cracked": 1, "intact": 0}


# --- bad input --------------------------------------------------------------------------------


def test_missing_data_dir_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.data_dir=.*does not exist"):
        datamodule(tmp_path / "nowhere")


def test_missing_class_folder_names_folder_and_fix(image_folder) -> None:
    root = image_folder(n_per_class=2)
    shutil.rmtree(root / "Negative")
    with pytest.raises(DataError, match=r"no Negative/ folder \(data.classes.negative"):
        datamodule(root)


def test_empty_class_folder(image_folder) -> None:
    root = image_folder(n_per_class=2)
    for f in (root / "Positive").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"Positive is empty"):
        datamodule(root)


def write_bad_files(folder: Path) -> set[str]:
    """A corrupt, a truncated, a zero-byte and a non-image file; returns their names."""
    good = next(folder.glob("*.jpg")).read_bytes()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("inspection notes, not an image")
    return {"corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"}


def test_bad_files_stop_before_training_and_are_listed(image_folder) -> None:
    root = image_folder(n_per_class=6)
    names = write_bad_files(root / "Positive")
    with pytest.raises(DataError) as info:
        datamodule(root)
    message = str(info.value)
    assert "4 unreadable file(s)" in message and "on_bad_image=skip" in message
    for name in names:
        assert name in message


def test_bad_file_list_is_capped_at_twenty_with_a_count(image_folder) -> None:
    root = image_folder(n_per_class=2)
    for i in range(23):
        (root / "Negative" / f"broken_{i:02d}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        datamodule(root)
    assert "23 unreadable file(s)" in str(info.value)
    assert "... and 3 more" in str(info.value)
    assert str(info.value).count("broken_") == 20


def test_skip_leaves_bad_files_out_and_writes_the_list(image_folder, tmp_path: Path) -> None:
    root = image_folder(n_per_class=6)
    names = write_bad_files(root / "Negative")
    dm = datamodule(root, on_bad_image="skip", split="all", output_dir=str(tmp_path / "run"))
    used = [Path(r.path).name for r in dm.splits["test"]]
    assert set(used).isdisjoint(names) and len(used) == 12
    listed = (tmp_path / "run" / "bad_files.txt").read_text()
    assert all(name in listed for name in names)
    # Every remaining sample loads: nothing bad reaches a training epoch.
    assert all(dm.datasets["test"][i][0].shape == (3, 32, 32) for i in range(12))


def test_scan_cache_notices_a_file_that_changed(image_folder, tmp_path: Path) -> None:
    root = image_folder(n_per_class=3)
    classes = {"negative": ["Negative"], "positive": ["Positive"]}
    assert not scan_folder(root, classes, cache_dir=tmp_path / "cache").bad_files
    (root / "Positive" / "00000.jpg").write_bytes(b"now broken")
    bad = scan_folder(root, classes, cache_dir=tmp_path / "cache").bad_files
    assert [Path(p).name for p, _ in bad] == ["00000.jpg"]


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"split": "random"}, "data.split"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"image_size": 8}, "data.image_size"),
        ({"on_bad_image": "ignore"}, "data.on_bad_image"),
        ({"train_fraction": 1.0}, "data.train_fraction"),
    ],
)
def test_out_of_range_settings_name_the_key(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        CrackDataModule(str(tmp_path), **kwargs)


# --- image formats and sizes ------------------------------------------------------------------


def odd_images(folder: Path) -> dict[str, Image.Image]:
    """One image per awkward format Pillow reads, in odd sizes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8))
    gray16 = Image.fromarray((rng.integers(20_000, 40_000, (64, 64))).astype(np.uint16))
    images = {
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "deep.png": gray16,
        "photo.tif": rgb.resize((300, 500)),
        "photo.bmp": rgb,
        "photo.webp": rgb,
        "cmyk.jpg": rgb.convert("CMYK"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)
    return images


def test_any_pillow_format_and_size_becomes_rgb_at_image_size(tmp_path: Path) -> None:
    odd_images(tmp_path / "Positive")
    odd_images(tmp_path / "Negative")
    dm = datamodule(tmp_path, split="all", image_size=40)
    dataset = dm.datasets["test"]
    assert len(dataset) == 16
    for i in range(len(dataset)):
        image, label, index = dataset[i]
        assert image.shape == (3, 40, 40) and image.dtype == torch.float32
        assert torch.isfinite(image).all()
    deep = dataset.paths.index(str(tmp_path / "Positive" / "deep.png"))
    # 16-bit values of 20000-40000 must map to mid-grey, not saturate at white.
    from crackdet.data.images import load_rgb

    pixels = np.asarray(load_rgb(dataset.paths[deep]))
    assert 60 < pixels.mean() < 170


@pytest.mark.parametrize("preset", ["none", "flip", "light", "strong"])
def test_augmentation_presets_keep_shape(preset: str) -> None:
    aug = OmegaConf.to_container(
        OmegaConf.load(CONFIG_DIR / "data" / "augmentation" / f"{preset}.yaml")
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8))
    out = train_transform(aug, 48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(image)
    assert out.shape == (3, 48, 48)


def test_augmentation_is_applied_to_the_train_split_only(image_folder) -> None:
    aug = {"name": "flip", "hflip": 1.0}
    dm = datamodule(image_folder(n_per_class=4), split="seed", augmentation=aug)
    train_image = dm.datasets["train"][0][0]
    plain = dm.datasets["val"].transform(Image.open(dm.datasets["train"].paths[0]).convert("RGB"))
    assert torch.allclose(train_image, plain.flip(-1), atol=1e-5)
    val_a, val_b = dm.datasets["val"][0][0], dm.datasets["val"][0][0]
    assert torch.equal(val_a, val_b)


def test_photos_are_read_upright_as_displayed(tmp_path: Path) -> None:
    from crackdet.data.images import load_rgb

    stored = Image.new("RGB", (60, 20), (90, 90, 90))
    exif = stored.getexif()
    exif[0x0112] = 6  # EXIF orientation: stored sideways, displayed rotated by 90 degrees
    stored.save(tmp_path / "portrait.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "portrait.jpg").size == (20, 60)


def test_hidden_files_and_folders_are_not_data(image_folder) -> None:
    root = image_folder(n_per_class=3)
    thumbs = root / "Positive" / ".thumbnails"
    thumbs.mkdir()
    (thumbs / "00000.jpg").write_bytes(b"a thumbnail cache entry, not an image")
    (root / "Negative" / ".DS_Store").write_bytes(b"\x00\x01")
    dm = datamodule(root, split="all")
    assert len(dm.splits["test"]) == 6


def test_synthetic_set_regenerated_smaller_leaves_no_extra_images(tmp_path: Path) -> None:
    from crackdet.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, n_per_class=5, size=32)
    make_synthetic_dataset(tmp_path, n_per_class=3, size=32)
    for cls in ("Positive", "Negative"):
        assert sorted(p.name for p in (tmp_path / cls).iterdir()) == [
            "00000.jpg",
            "00001.jpg",
            "00002.jpg",
        ]


def test_the_resize_filter_comes_from_the_backbone_weights_and_reaches_the_transforms() -> None:
    """EfficientNet's weights were evaluated bicubic, ResNet18's bilinear; the transforms follow."""
    from PIL import Image

    from crackdet.data.transforms import eval_transform
    from crackdet.models.backbone import preprocessing

    assert preprocessing("resnet18").interpolation == "bilinear"
    assert preprocessing("efficientnet_b0").interpolation == "bicubic"
    image = Image.fromarray((torch.rand(97, 97, 3) * 255).to(torch.uint8).numpy())
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    bilinear = eval_transform(40, mean, std, "bilinear")(image)
    bicubic = eval_transform(40, mean, std, "bicubic")(image)
    assert bilinear.shape == bicubic.shape == (3, 40, 40)
    assert not torch.allclose(bilinear, bicubic)
    with pytest.raises(ConfigError, match="data.interpolation=lanczos"):
        eval_transform(40, mean, std, "lanczos")


def test_the_datamodule_records_its_resize_filter(tiny_cfg) -> None:
    cfg = tiny_cfg("model.backbone=efficientnet_b0", "model.weights=null")
    assert cfg.data.interpolation == "bicubic"
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    assert datamodule.hparams["interpolation"] == "bicubic"
