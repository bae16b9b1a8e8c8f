"""predict.py: any photos, any size; large ones scanned in tiles with a heatmap."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from crackdet.data.synthetic import synthetic_image
from crackdet.data.transforms import eval_transform
from crackdet.deploy.predict import predict
from crackdet.deploy.tiling import heatmap_overlay, tile_batches, tile_boxes, tile_starts
from crackdet.evaluation.threshold import CHECKPOINT_KEY
from tests.conftest import compose_cfg, run_entry


def _predict(ckpt: Path, input_path: Path, run_dir: Path, *overrides: str) -> list[dict]:
    cfg = compose_cfg(
        run_dir, [f"ckpt_path={ckpt}", f"input={input_path}", *overrides], config_name="predict"
    )
    predict(cfg)
    with open(run_dir / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A synthetic concrete photo of any size (a data set style texture, stretched)."""
    return synthetic_image(seed, 256, crack=True).resize(size)


@pytest.fixture
def best_ckpt(trained_run: Path) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


def test_folder_of_mixed_photos(best_ckpt: Path, tmp_path: Path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    _photo((64, 64)).save(photos / "small.jpg")
    _photo((227, 227), seed=1).save(photos / "crop.png")
    _photo((1600, 1200), seed=2).save(photos / "wall.jpg")
    _photo((90, 70), seed=3).convert("L").save(photos / "sub" / "grey.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "notes.txt").write_text("not an image, not a prediction")

    rows = {Path(r["path"]).name: r for r in _predict(best_ckpt, photos, tmp_path / "run")}

    assert sorted(rows) == ["broken.jpg", "crop.png", "grey.png", "small.jpg", "wall.jpg"]
    assert rows["broken.jpg"]["error"] and rows["broken.jpg"]["prob_crack"] == ""
    sizes = {
        "small.jpg": (64, 64),
        "crop.png": (227, 227),
        "wall.jpg": (1600, 1200),
        "grey.png": (90, 70),
    }
    for name, (width, height) in sizes.items():
        row = rows[name]
        assert (int(row["width"]), int(row["height"])) == (width, height)
        assert row["error"] == ""
        prob, threshold = float(row["prob_crack"]), float(row["threshold"])
        assert 0 <= prob <= 1 and int(row["pred"]) == int(prob >= threshold)
    for name in ("small.jpg", "crop.png", "grey.png"):
        assert rows[name]["n_tiles"] == "1" and rows[name]["heatmap"] == ""

    wall = rows["wall.jpg"]
    # 227 px windows flush with both edges: 8 across 1600 px, 6 down 1200 px.
    assert int(wall["n_tiles"]) == 48
    assert float(wall["prob_crack"]) == float(wall["max_tile_prob"])
    assert 0 <= float(wall["crack_tile_fraction"]) <= 1
    heatmaps = sorted((tmp_path / "run" / "heatmaps").iterdir())
    assert [tmp_path / "run" / wall["heatmap"]] == heatmaps
    with Image.open(heatmaps[0]) as heatmap:
        assert heatmap.width / heatmap.height == pytest.approx(1600 / 1200, rel=0.01)
        assert max(heatmap.size) <= 1600


def test_tiles_are_classified_like_data_set_images():
    image = _photo((500, 300))
    boxes = tile_boxes(500, 300, tile=227, stride=227)
    assert [b[0] for b in boxes[:3]] == [0, 227, 273]  # the last column is flush with the edge
    assert {b[3] for b in boxes} == {227, 300}
    transform = eval_transform(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = list(tile_batches(pil_to_tensor(image), boxes, batch_size=4, transform=transform))
    assert [len(b) for b in batches] == [4, 2]
    expected = torch.stack([transform(image.crop(box)) for box in boxes])
    torch.testing.assert_close(torch.cat(batches), expected)


@pytest.mark.parametrize(
    ("length", "tile", "stride"),
    [(1600, 227, 227), (1200, 227, 100), (227, 227, 227), (230, 227, 50)],
)
def test_windows_cover_the_whole_side(length: int, tile: int, stride: int):
    starts = tile_starts(length, tile, stride)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + tile == length
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_heatmap_shades_only_crack_tiles():
    image = Image.new("RGB", (400, 300), (128, 128, 128))
    boxes = tile_boxes(400, 300, tile=200, stride=200)  # 2 x 2 tiles (the lower row flush)
    overlay = np.asarray(heatmap_overlay(image, boxes, [0.9, 0.1, 0.2, 0.3], threshold=0.5))
    assert overlay.shape == (300, 400, 3)
    crack_centre, clear_centre = overlay[50, 50], overlay[250, 300]
    assert crack_centre[0] > 128 + 50 and crack_centre[2] < 128 - 50
    assert tuple(clear_centre) == (128, 128, 128)


def test_only_photos_clearly_larger_than_the_model_input_are_tiled(best_ckpt, tmp_path):
    from crackdet.deploy.predict import PredictSettings
    from crackdet.deploy.tiling import is_tiled

    settings = PredictSettings.from_cfg(compose_cfg(tmp_path, config_name="predict").predict)
    assert settings.min_side(224) == 448  # default: twice the model's input size
    assert not is_tiled(256, 256, 227, 448)  # an SDNET crop for a 224 px model: one prediction
    assert is_tiled(1600, 1200, 227, 448)
    _photo((256, 256)).save(tmp_path / "sdnet.jpg")
    (row,) = _predict(
        best_ckpt, tmp_path / "sdnet.jpg", tmp_path / "run", "predict.tile_min_side=448"
    )
    assert row["n_tiles"] == "1" and row["heatmap"] == ""
    assert not (tmp_path / "run" / "heatmaps").exists()


def test_photos_with_the_same_name_get_their_own_heatmaps(best_ckpt: Path, tmp_path: Path):
    for folder in ("north", "south"):
        (tmp_path / "photos" / folder).mkdir(parents=True)
        _photo((300, 240)).save(tmp_path / "photos" / folder / "wall.jpg")
    rows = _predict(best_ckpt, tmp_path / "photos" / "*" / "wall.jpg", tmp_path / "run")
    names = [r["heatmap"] for r in rows]
    assert len(set(names)) == 2 and all((tmp_path / "run" / n).is_file() for n in names)


def test_portrait_photo_is_scanned_as_displayed(best_ckpt: Path, tmp_path: Path):
    photo = _photo((300, 240))
    exif = photo.getexif()
    exif[0x0112] = 6  # EXIF orientation: stored sideways, shown rotated by 90 degrees
    photo.save(tmp_path / "portrait.jpg", exif=exif.tobytes())
    (row,) = _predict(best_ckpt, tmp_path / "portrait.jpg", tmp_path / "run")
    assert (int(row["width"]), int(row["height"])) == (240, 300)
    with Image.open(tmp_path / "run" / row["heatmap"]) as heatmap:
        assert heatmap.size == (240, 300)


def test_probabilities_are_those_of_the_lightning_classifier(best_ckpt: Path, tmp_path: Path):
    # predict.py runs the plain network without Lightning; p(crack) is bit for bit the same.
    from crackdet.deploy.inference import load_checkpoint, load_network_checkpoint
    from crackdet.deploy.predict import PredictSettings, _Predictor

    settings = PredictSettings(227, 227, 4, 1600, "cpu", backbone_runtime="eager")
    tiles = pil_to_tensor(_photo((500, 300)))
    probs = []
    for load in (load_checkpoint, load_network_checkpoint):
        predictor = _Predictor(load(best_ckpt), settings, torch.device("cpu"), tmp_path)
        boxes = tile_boxes(500, 300, tile=227, stride=227)
        batches = tile_batches(tiles, boxes, settings.batch_size, predictor.transform)
        probs.append([p for batch in batches for p in predictor.probabilities(batch)])
    assert len(probs[0]) == 6 and probs[0] == probs[1]


@pytest.fixture
def ckpt_variants(best_ckpt: Path, tmp_path: Path) -> dict[str, Path]:
    """The trained checkpoint with a known stored threshold, and without any."""
    checkpoint = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    stored, bare = tmp_path / "stored.ckpt", tmp_path / "bare.ckpt"
    torch.save({**checkpoint, CHECKPOINT_KEY: {"threshold": 0.37, "target_recall": 0.99}}, stored)
    torch.save({k: v for k, v in checkpoint.items() if k != CHECKPOINT_KEY}, bare)
    return {"stored": stored, "bare": bare}


@pytest.mark.parametrize(
    ("variant", "overrides", "expected"),
    [
        ("stored", [], 0.37),
        ("stored", ["predict.threshold=0.9"], 0.9),
        ("bare", [], 0.5),
    ],
)
def test_threshold_stored_overridden_or_default(
    ckpt_variants, tmp_path: Path, variant: str, overrides: list[str], expected: float
):
    _photo((64, 64)).save(tmp_path / "one.jpg")
    (row,) = _predict(ckpt_variants[variant], tmp_path / "one.jpg", tmp_path / "run", *overrides)
    assert float(row["threshold"]) == expected
    assert int(row["pred"]) == int(float(row["prob_crack"]) >= expected)


@pytest.mark.slow
def test_entry_point_names_a_missing_input(best_ckpt: Path, tmp_path: Path):
    missing = tmp_path / "no_such_folder"
    result = run_entry(
        "predict.py",
        f"ckpt_path={best_ckpt}",
        f"input={missing}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2
    assert f"input={missing}: no such file or folder" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "predictions.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_names_the_fix() -> None:
    from crackdet.deploy.inference import pick_device
    from crackdet.errors import ConfigError

    with pytest.raises(ConfigError, match="use device=auto"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"
