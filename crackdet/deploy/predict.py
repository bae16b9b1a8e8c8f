"""The job behind `python predict.py`: classify every photo found, tile the large ones, map cracks."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torchvision.transforms.v2.functional import pil_to_tensor

from crackdet.cli.run import rerun_command
from crackdet.data.images import load_rgb
from crackdet.data.scan import FINGERPRINT, fingerprint
from crackdet.deploy.inference import (
    LoadedCheckpoint,
    backbone_runner,
    find_images,
    load_network_checkpoint,
    pick_device,
    resolve_threshold,
)
from crackdet.deploy.tiling import Box, heatmap_overlay, is_tiled, tile_batches, tile_boxes
from crackdet.errors import ConfigError, DataError, OutputError
from crackdet.io import atomic_write_bytes, write_json

log = logging.getLogger(__name__)

PREDICT_COLUMNS = (
    "path",
    "width",
    "height",
    "prob_crack",
    "pred",
    "threshold",
    "n_tiles",
    "crack_tile_fraction",
    "max_tile_prob",
    "heatmap",
    "error",
)


@dataclass
class PredictSettings:
    """The `predict.*` settings, checked."""

    tile_size: int
    stride: int
    batch_size: int
    heatmap_max_side: int
    device: str
    #: Photos with a side at least this long are tiled; None: twice the model's input size.
    tile_min_side: int | None = None
    backbone_runtime: str | None = None
    backbone_precision: str | None = None
    resume: bool = False

    def min_side(self, image_size: int) -> int:
        """The side from which photos are tiled, for a model of `image_size` px input."""
        return self.tile_min_side or 2 * image_size

    @classmethod
    def from_cfg(cls, section: DictConfig) -> PredictSettings:
        """Read and check `predict.*`; the stride defaults to the tile size."""
        tile = int(section.tile_size)
        stride = int(section.stride) if section.get("stride") is not None else tile
        settings = cls(
            tile,
            stride,
            int(section.batch_size),
            int(section.heatmap_max_side),
            str(section.device),
            None if section.get("tile_min_side") is None else int(section.tile_min_side),
            section.get("backbone_runtime"),
            section.get("backbone_precision"),
            bool(section.get("resume", False)),
        )
        if settings.tile_min_side is not None and settings.tile_min_side < 1:
            raise ConfigError(
                f"predict.tile_min_side={settings.tile_min_side} must be a positive integer, or "
                "null for twice the model's input size."
            )
        if tile < 1 or settings.batch_size < 1 or settings.heatmap_max_side < 1:
            raise ConfigError(
                f"predict.tile_size={tile}, predict.batch_size={settings.batch_size} and "
                f"predict.heatmap_max_side={settings.heatmap_max_side} must be positive integers."
            )
        if not 1 <= stride <= tile:
            raise ConfigError(
                f"predict.stride={stride} must lie in [1, predict.tile_size={tile}]: a larger "
                "stride would leave parts of the photo unexamined."
            )
        return settings


@dataclass
class _Row:
    """One line of predictions.csv."""

    path: str
    width: int | str = ""
    height: int | str = ""
    prob: float | None = None
    tile_probs: list[float] = field(default_factory=list)
    heatmap: str = ""
    error: str = ""

    def cells(self, threshold: float) -> list[Any]:
        """The CSV cells; an unreadable file has only its path and error."""
        if self.prob is None:
            return [self.path, self.width, self.height, "", "", "", "", "", "", "", self.error]
        tiles = self.tile_probs or [self.prob]
        crack_tiles = sum(p >= threshold for p in tiles)
        return [
            self.path,
            self.width,
            self.height,
            f"{self.prob:.6f}",
            int(self.prob >= threshold),
            threshold,
            len(tiles),
            f"{crack_tiles / len(tiles):.6f}",
            f"{max(tiles):.6f}",
            self.heatmap,
            "",
        ]


class _Predictor:
    """Runs the classifier in batches: whole small images across files, tiles within a photo."""

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        settings: PredictSettings,
        device: torch.device,
        cache_dir: str | Path | None = None,
    ):
        self.model = loaded.model.to(device).eval()
        self.features = backbone_runner(
            self.model.backbone,
            loaded.settings,
            settings.backbone_runtime,
            settings.backbone_precision,
            (settings.batch_size, loaded.image_size),
            device,
            cache_dir,
            loaded.normalization,
        )
        # Photos and tiles are resized as uint8 and the runner normalises each batch, as the
        # feature cache's extraction does (OpenVINO inside its graph): less work per image.
        self.transform = loaded.resize()
        self.settings = settings
        self.device = device
        self.pending: list[tuple[_Row, torch.Tensor]] = []

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> list[float]:
        """p(crack) of every image of a batch of resized uint8 images (`self.transform`'s)."""
        logits = self.model.head(self.features(batch).to(self.device))
        return logits.softmax(dim=-1)[:, 1].float().cpu().tolist()

    def add_whole(self, row: _Row, image: Image.Image) -> list[_Row]:
        """Queue a small image; returns the rows finished by a full batch."""
        self.pending.append((row, self.transform(image)))
        return self.flush() if len(self.pending) >= self.settings.batch_size else []

    def flush(self) -> list[_Row]:
        """Classify the queued small images."""
        if not self.pending:
            return []
        rows, tensors = zip(*self.pending, strict=True)
        self.pending = []
        for row, prob in zip(rows, self.probabilities(torch.stack(tensors)), strict=True):
            row.prob = prob
        return list(rows)

    def scan_tiles(
        self, image: Image.Image, on_batch: Callable[[int, int], None]
    ) -> tuple[list[Box], list[float]]:
        """Boxes and p(crack) of every tile of a large image, one batch of tiles at a time."""
        s = self.settings
        boxes = tile_boxes(image.width, image.height, s.tile_size, s.stride)
        probs: list[float] = []
        for batch in tile_batches(pil_to_tensor(image), boxes, s.batch_size, self.transform):
            probs += self.probabilities(batch)
            on_batch(len(batch), len(boxes))
        return boxes, probs


#: Beside predictions.csv: what made its rows, so that a resumed run adds rows made the same way.
SETTINGS_FILE = "predictions_settings.json"
#: The recorded settings a resumed run must share, and how the message names each.
_RESUME_MUST_MATCH = {
    "checkpoint_fingerprint": "ckpt_path (the checkpoint's content)",
    "threshold": "the threshold (predict.threshold, or the checkpoint's)",
    "tile_size": "predict.tile_size",
    "stride": "predict.stride",
    "tile_min_side": "predict.tile_min_side (the side from which photos are tiled)",
    "backbone_precision": "the backbone precision (predict.backbone_precision, or the checkpoint's)",
}


def prediction_settings(
    loaded: LoadedCheckpoint, settings: PredictSettings, threshold: float
) -> dict[str, Any]:
    """What decides a row of predictions.csv: the model (by content) and the predict settings.

    fp32 runtimes agree to 1e-6, so the runtime is recorded but a resumed run may use another.
    """
    return {
        "checkpoint": str(loaded.path),
        "checkpoint_fingerprint": fingerprint(loaded.path.read_bytes()),
        "fingerprint": FINGERPRINT,
        "threshold": threshold,
        "tile_size": settings.tile_size,
        "stride": settings.stride,
        "tile_min_side": settings.min_side(loaded.image_size),
        "backbone_runtime": settings.backbone_runtime
        or loaded.settings.get("backbone_runtime", "auto"),
        "backbone_precision": settings.backbone_precision
        or loaded.settings.get("backbone_precision", "fp32"),
    }


class PredictionsFile:
    """predictions.csv, written row by row and flushed per batch, so a crash keeps the rows.

    An existing file is continued only with `predict.resume=true`: its complete rows are kept,
    their images are skipped, and a line cut short by a crash is dropped (its image is redone).
    `predictions_settings.json` beside it records what made the rows (`prediction_settings`);
    a resumed run with another checkpoint or other settings is refused, naming each difference.
    """

    def __init__(self, path: Path, settings: dict[str, Any], resume: bool):
        self.path = path
        self.settings_path = path.with_name(SETTINGS_FILE)
        self.done: dict[str, dict[str, str]] = {}
        if path.exists():
            if not resume:
                raise ConfigError(
                    f"{path} already holds predictions; it is never overwritten. Continue it "
                    "with predict.resume=true (images listed there are skipped), or leave "
                    "hydra.run.dir unset for a fresh directory."
                )
            self._check_settings(settings)
            self.done = self._complete_rows(settings["threshold"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists() or path.stat().st_size == 0
            if fresh:
                write_json(self.settings_path, settings)
            self.handle = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise OutputError.from_os_error(path, exc) from exc
        self.writer = csv.writer(self.handle)
        if fresh:
            self.writer.writerow(PREDICT_COLUMNS)
        self.written = 0

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to continue rows made with another checkpoint or other predict settings."""
        try:
            recorded = json.loads(self.settings_path.read_text())
        except FileNotFoundError:
            log.warning(
                "%s has no %s (an earlier crackdet wrote it): only its threshold is checked "
                "against this run's.",
                self.path,
                SETTINGS_FILE,
            )
            return
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.settings_path} cannot be read ({type(exc).__name__}: {exc}), so it is "
                f"unknown what made the rows of {self.path}. Leave hydra.run.dir unset for a "
                "fresh directory."
            ) from exc
        differences = [
            f"  - {name}: {self._shown(recorded, key)} there, {self._shown(settings, key)} here"
            for key, name in _RESUME_MUST_MATCH.items()
            if recorded.get(key) != settings[key]
        ]
        if differences:
            raise ConfigError(
                f"{self.path} was written with other settings than this run's, so its rows and "
                "new ones would not be comparable:\n" + "\n".join(differences) + "\nContinue it "
                f"with the settings recorded in {self.settings_path}, or leave hydra.run.dir "
                "unset for a fresh directory."
            )

    @staticmethod
    def _shown(settings: dict[str, Any], key: str) -> str:
        if key == "checkpoint_fingerprint":
            digest = str(settings.get(key))[:12]
            return f"{settings.get('checkpoint')} (content {digest}...)"
        return str(settings.get(key))

    def _complete_rows(self, threshold: float) -> dict[str, dict[str, str]]:
        """The rows of the earlier run, by path; the file is cut back to its last whole line."""
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        rows = list(csv.DictReader(io.StringIO(whole.decode("utf-8"), newline="")))
        if len(whole) < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(whole))
        used = {r["threshold"] for r in rows if r.get("threshold")}
        if used and used != {str(threshold)}:
            raise ConfigError(
                f"{self.path} was written with threshold {', '.join(sorted(used))}, this run "
                f"uses {threshold}: rows would not be comparable. Continue it with the same "
                "ckpt_path and predict.threshold, or leave hydra.run.dir unset for a fresh one."
            )
        return {r["path"]: r for r in rows}

    def write(self, rows: list[Any], threshold: float) -> None:
        """Append a finished batch (or tiled photo) and flush it, so that a kill keeps it."""
        for row in rows:
            self.writer.writerow(row.cells(threshold))
        self.written += len(rows)
        self.flush()

    def flush(self) -> None:
        """Hand the written rows to the operating system."""
        try:
            self.handle.flush()
        except OSError as exc:
            raise OutputError.from_os_error(self.path, exc) from exc

    def close(self) -> None:
        """Flush, sync to disk and close (once)."""
        if self.handle.closed:
            return
        self.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


class PredictionInterrupted(SystemExit):
    """predict.py stopped on Ctrl-C or SIGTERM; the rows so far are kept. Status 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM end the loop with PredictionInterrupted instead of a traceback."""

    def stop(signum: int, frame: Any) -> None:
        raise PredictionInterrupted(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _kept_when_stopped(out: PredictionsFile, total: int) -> Iterator[None]:
    """Close predictions.csv however the loop ends; on a signal, say what it holds and how to go on."""
    try:
        yield
    except PredictionInterrupted as stop:
        out.close()
        command = rerun_command(
            "predict.py", {"hydra.run.dir": str(out.path.parent), "predict.resume": "true"}
        )
        log.warning(
            "%s: stopped after %d of %d image(s); %s holds their rows. Continue with: %s",
            signal.Signals(stop.signum).name,
            len(out.done) + out.written,
            total,
            out.path,
            command,
        )
        raise
    finally:
        out.close()


def _check_some_readable(rows: list[_Row], earlier: PredictionsFile, spec: Any) -> None:
    """Refuse a run in which no image could be read: its predictions would all be empty."""
    if any(not row["error"] for row in earlier.done.values()):
        return
    if rows and all(row.error for row in rows):
        raise DataError(
            f"None of the {len(rows)} image(s) of input={spec} could be read (e.g. {rows[0].path}: "
            f"{rows[0].error}); {earlier.path} lists each with its reason. Fix: give images "
            "Pillow can open (.jpg, .png, .tif, ...)."
        )


def _heatmap_name(path: Path, used: set[str]) -> str:
    """`<stem>_heatmap.png`, with -2, -3, ... appended when another photo had the same stem."""
    name, n = f"{path.stem}_heatmap.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}-{n}_heatmap.png"
    used.add(name)
    return name


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Classify every image `cfg.input` names; write predictions.csv and heatmaps/ to the run dir."""
    settings = PredictSettings.from_cfg(cfg.predict)
    paths = find_images(cfg.get("input"), "input")
    loaded = load_network_checkpoint(cfg.get("ckpt_path"))
    threshold, source = resolve_threshold(cfg.predict.get("threshold"), loaded.stored_threshold)
    device = pick_device(settings.device)
    output_dir = Path(cfg.paths.output_dir)
    heatmap_dir = output_dir / "heatmaps"
    log.info(
        "Classifying %d image(s) with %s (image size %d, threshold %.4g from the %s) on %s; "
        "images with a side of at least %d px (and over %d px) are scanned in tiles every %d px.",
        len(paths),
        loaded.path,
        loaded.image_size,
        threshold,
        source,
        device,
        settings.min_side(loaded.image_size),
        settings.tile_size,
        settings.stride,
    )
    out = PredictionsFile(
        output_dir / "predictions.csv",
        prediction_settings(loaded, settings, threshold),
        settings.resume,
    )
    todo = [p for p in paths if str(p.absolute()) not in out.done]
    if out.done:
        log.info(
            "Continuing %s: %d image(s) already done, %d to go.", out.path, len(out.done), len(todo)
        )
    predictor = _Predictor(loaded, settings, device, cfg.paths.get("cache_dir"))
    rows: list[_Row] = []
    used_names = {Path(r["heatmap"]).name for r in out.done.values() if r.get("heatmap")}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with _stop_on_signals(), _kept_when_stopped(out, len(paths)), Progress(*columns) as progress:
        images_task = progress.add_task("Images", total=len(todo))
        tiles_task = progress.add_task("Tiles", total=None, visible=False)

        def tiles_done(n: int, total: int) -> None:
            progress.update(tiles_task, advance=n, total=total, visible=True)

        def finished(done: list[_Row]) -> None:
            out.write(done, threshold)
            progress.advance(images_task, len(done))

        for path in todo:
            row = _Row(str(path.absolute()))
            rows.append(row)
            try:
                image = load_rgb(path)
            except Exception as exc:  # any decoder failure: report the file, carry on
                row.error = f"{type(exc).__name__}: {exc}"
                finished([row])
                continue
            row.width, row.height = image.size
            if not is_tiled(*image.size, settings.tile_size, settings.min_side(loaded.image_size)):
                finished(predictor.add_whole(row, image))
                continue
            progress.reset(tiles_task, total=None, visible=False)
            boxes, row.tile_probs = predictor.scan_tiles(image, tiles_done)
            row.prob = max(row.tile_probs)
            name = _heatmap_name(path, used_names)
            overlay = heatmap_overlay(
                image, boxes, row.tile_probs, threshold, settings.heatmap_max_side
            )
            png = io.BytesIO()
            overlay.save(png, format="PNG")
            atomic_write_bytes(heatmap_dir / name, png.getvalue())
            row.heatmap = f"heatmaps/{name}"
            finished([row])
        finished(predictor.flush())
        progress.update(tiles_task, visible=False)
    csv_path = out.path
    summary = {
        "predictions": str(csv_path),
        "images": len(rows),
        "already_done": len(out.done),
        "errors": sum(bool(r.error) for r in rows),
        "cracks": sum(r.prob is not None and r.prob >= threshold for r in rows),
        "heatmaps": sum(bool(r.heatmap) for r in rows),
        "threshold": threshold,
        "threshold_source": source,
    }
    log.info(
        "%d image(s): %d with a crack, %d unreadable, %d heatmap(s). Wrote %s",
        summary["images"],
        summary["cracks"],
        summary["errors"],
        summary["heatmaps"],
        csv_path,
    )
    for row in rows:
        if row.error:
            log.warning("Could not read %s: %s", row.path, row.error)
    _check_some_readable(rows, out, cfg.get("input"))
    return summary
