"""Backbone features computed once per data set and backbone, kept on disk, served as datasets.

With a frozen backbone in eval mode and deterministic preprocessing, an image's 512 features never
change. They are extracted once into `<cache_dir>/features/<key>.pt`; later epochs, every job of a
sweep and every Optuna trial then train the head on them in seconds. The key covers everything the
features depend on, so a changed input gives a new file, never a stale one.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities.seed import isolate_rng
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crackdet.data.datamodule import CrackDataModule
from crackdet.data.dataset import ImageRecordDataset
from crackdet.data.scan import ImageRecord
from crackdet.data.transforms import eval_transform
from crackdet.errors import ConfigError, DataError
from crackdet.io import atomic_write_bytes
from crackdet.models.backbone import FEATURE_DIM
from crackdet.models.runtime import FeatureFn, build_feature_extractor, module_digest

log = logging.getLogger(__name__)

MODES = ("auto", "off", "rebuild")
#: Bump when the file layout or the way features are computed changes.
FORMAT_VERSION = 1


class FeatureDataset(Dataset):
    """Yields (features, label, index), in the order of the image dataset of the same split."""

    def __init__(self, features: torch.Tensor, labels: Sequence[int]):
        self.features = features
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.features[index], self.labels[index], index


def usage_problem(datamodule: CrackDataModule, model: L.LightningModule) -> str | None:
    """Why cached features cannot stand in for the backbone in this run, or None when they can."""
    hparams = model.hparams
    if datamodule.feature_cache == "off":
        return "data.feature_cache=off"
    if not hparams.get("freeze_backbone", False):
        return "model.freeze_backbone=false: the backbone is trained, so its features change"
    if hparams.get("bn_mode") != "frozen":
        return (
            f"model.bn_mode={hparams.get('bn_mode')}: BatchNorm statistics change at every "
            "training step, and the features with them"
        )
    if not datamodule.deterministic_train_transform:
        name = datamodule.augmentation.get("name", "a random augmentation")
        return f"data.augmentation={name} changes the training images at every epoch"
    if datamodule.cache_dir is None:
        return "data.cache_dir=null leaves nowhere to keep features"
    return None


def cache_key(
    backbone_digest: str,
    datamodule: CrackDataModule,
    precision: str,
    records: Sequence[ImageRecord],
    backbone_precision: str = "fp32",
) -> str:
    """The name of the features of `records` under these weights, preprocessing and precision.

    Every float32 backbone runtime gives the same features (within 1e-6), so they share one
    file; bfloat16 features differ (about 3e-3 relative) and get their own.
    """
    description = {
        "format": FORMAT_VERSION,
        "backbone": backbone_digest,
        "image_size": datamodule.image_size,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "precision": precision,
        # Resizing and kernels may change between releases: a new version means new features.
        "versions": [torch.__version__, torchvision.__version__],
        "files": [[r.path, r.digest] for r in records],
    }
    if backbone_precision != "fp32":
        description["backbone_precision"] = backbone_precision
    encoded = json.dumps(description, sort_keys=True).encode()
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def _checksum(features: torch.Tensor) -> str:
    return hashlib.blake2b(features.contiguous().numpy(), digest_size=16).hexdigest()


def write_cache(path: Path, key: str, features: torch.Tensor) -> None:
    """Save features atomically: a concurrent reader sees the old file or the whole new one."""
    buffer = io.BytesIO()
    stored = {
        "format": FORMAT_VERSION,
        "key": key,
        "checksum": _checksum(features),
        "features": features,
    }
    torch.save(stored, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_cache(path: Path, key: str, count: int) -> torch.Tensor | None:
    """The `count` features stored at `path` for `key`; None (with a warning) if unusable."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        features = stored["features"]
        if stored["key"] != key or tuple(features.shape) != (count, FEATURE_DIM):
            raise ValueError(f"it holds other features (shape {tuple(features.shape)})")
        if stored["checksum"] != _checksum(features):
            raise ValueError("its contents do not match their checksum")
    except Exception as exc:  # truncated zip, unpickling errors, missing keys: all mean damaged
        log.warning(
            "Feature cache %s is damaged (%s: %s); extracting the features again.",
            path,
            type(exc).__name__,
            exc,
        )
        return None
    return features


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`: another job needing the same features waits here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Another job is extracting these features; waiting for it (%s).", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _RateColumn(ProgressColumn):
    """Images per second, averaged over the last 30 s."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.1f} images/s", style="progress.data.speed")


def extract_features(
    datamodule: CrackDataModule,
    extract: FeatureFn,
    records: Sequence[ImageRecord],
    show_progress: bool = True,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Features of `records`' images; DataLoader workers decode and resize while the backbone runs."""
    transform = eval_transform(datamodule.image_size, datamodule.mean, datamodule.std)
    dataset = ImageRecordDataset(records, transform)
    features = torch.empty(len(dataset), FEATURE_DIM)
    workers = datamodule.num_workers
    if device is None or device.type == "cpu":
        # On a CPU the backbone costs ~20x more per image than decoding it (about 21 ms against
        # 1.2 ms here): one worker keeps up, and more only take cores from the backbone
        # (measured on 2 cores: 0.90 of the compute ceiling with one worker, 0.83 with two).
        workers = min(workers, 1)
    loader = DataLoader(
        dataset,
        batch_size=datamodule.batch_size,
        num_workers=workers,
        pin_memory=datamodule.pin_memory,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("Extracting backbone features", total=len(dataset))
        for images, _, index in loader:
            features[index] = extract(images).float().cpu()
            progress.advance(task, len(index))
    return features


def _extractor(
    datamodule: CrackDataModule,
    backbone: nn.Module,
    runtime: str,
    backbone_precision: str,
    precision: Precision,
    device: torch.device | None,
) -> FeatureFn:
    if runtime == "auto" and precision.precision != "32-true":
        runtime = "eager"  # the one runtime that follows Lightning's precision plugin
    if runtime != "eager" and precision.precision != "32-true":
        raise ConfigError(
            f"model.backbone_runtime={runtime} computes float32 features, but "
            f"trainer.precision={precision.precision}: use model.backbone_runtime=eager."
        )
    example = torch.zeros(datamodule.batch_size, 3, datamodule.image_size, datamodule.image_size)
    extract = build_feature_extractor(
        backbone, runtime, example, device, backbone_precision, datamodule.cache_dir
    )

    def run(images: torch.Tensor) -> torch.Tensor:
        # The same autocast / dtype as the training step, so features match the uncached path.
        with precision.forward_context():
            return extract(precision.convert_input(images))

    return run


def _gather(local: torch.Tensor, total: int, trainer: L.Trainer) -> torch.Tensor:
    """Every rank's share (rank r holds rows r, r+world, ...) merged back into one tensor."""
    world = trainer.world_size
    padded = torch.zeros(-(-total // world), FEATURE_DIM, device=trainer.strategy.root_device)
    padded[: len(local)] = local.to(padded.device)
    gathered = trainer.strategy.all_gather(padded).cpu()
    features = torch.empty(total, FEATURE_DIM)
    for rank in range(world):
        share = features[rank::world]
        share.copy_(gathered[rank, : len(share)])
    return features


def cached_features(
    datamodule: CrackDataModule,
    backbone: nn.Module,
    runtime: str = "eager",
    *,
    backbone_precision: str = "fp32",
    rebuild: bool = False,
    trainer: L.Trainer | None = None,
    backbone_digest: str | None = None,
) -> torch.Tensor:
    """Features of every image of `datamodule` (scan order), from the cache or extracted once.

    With a multi-process `trainer`, each rank extracts its share, rank 0 writes the file. The
    run's random streams are left untouched, so cached and uncached runs shuffle alike.
    """
    records = datamodule.scan.records
    precision = trainer.precision_plugin if trainer else Precision()
    rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
    digest = backbone_digest or module_digest(backbone)
    key = cache_key(digest, datamodule, precision.precision, records, backbone_precision)
    path = Path(datamodule.cache_dir) / "features" / f"{key}.pt"
    try:
        lock = file_lock(path.with_suffix(".lock")) if rank == 0 else nullcontext()
        with isolate_rng(), lock:
            features = None if rank or rebuild else read_cache(path, key, len(records))
            missing = features is None
            if trainer is not None:
                missing = trainer.strategy.broadcast(missing)
            if missing:
                if rank == 0:
                    why = "rebuild requested" if rebuild else "no usable cache"
                    log.info(
                        "Extracting features of %d images with the %s backbone (%s) ...",
                        len(records),
                        runtime,
                        why,
                    )
                start = time.perf_counter()
                device = trainer.strategy.root_device if trainer else None
                extract = _extractor(
                    datamodule, backbone, runtime, backbone_precision, precision, device
                )
                prepared = time.perf_counter()
                features = extract_features(
                    datamodule, extract, records[rank::world], rank == 0, device
                )
                if world > 1:
                    features = _gather(features, len(records), trainer)
                if rank == 0:
                    write_cache(path, key, features)
                    seconds = time.perf_counter() - prepared
                    log.info(
                        "Extracted %d features in %.1f s (%.1f images/s, after %.1f s "
                        "preparing the %s backbone); saved to %s.",
                        len(records),
                        seconds,
                        len(records) / seconds,
                        prepared - start,
                        runtime,
                        path,
                    )
    except OSError as exc:
        raise DataError(
            f"Cannot keep backbone features in paths.cache_dir={datamodule.cache_dir} "
            f"({type(exc).__name__}: {exc}). Point paths.cache_dir at a writable folder, or set "
            "data.feature_cache=off."
        ) from exc
    if features is None:  # not rank 0, and rank 0 found a valid file
        features = read_cache(path, key, len(records))
        if features is None:
            raise DataError(f"Rank {rank} cannot read the feature cache {path} rank 0 checked.")
    elif not missing and rank == 0:
        log.info(
            "Loaded features of %d images from %s; the backbone will not run on them.",
            len(records),
            path,
        )
    return features


class FeatureCache(L.Callback):
    """Serves cached backbone features instead of images when they cannot change (data.feature_cache).

    Decides at setup (and logs why not). The features are extracted or loaded when Lightning asks
    for a data loader: by then a checkpoint being resumed or evaluated is in the backbone, and
    every process of a multi-process run takes part.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._features: torch.Tensor | None = None
        self._digest: str | None = None
        self._fingerprint: tuple | None = None
        self._fingerprint_digest = ""
        self._rows: dict[str, int] = {}
        self._rebuilt = False
        self._explained = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Hand the data module a source of features, or say why the backbone runs on images."""
        datamodule = trainer.datamodule
        if not isinstance(datamodule, CrackDataModule):
            return
        problem = usage_problem(datamodule, pl_module)
        if problem:
            if not self._explained and trainer.is_global_zero:
                log.info("Feature cache not used: %s. The backbone runs on every batch.", problem)
            self._explained = True
            return
        self._trainer = trainer
        datamodule.feature_source = self.dataset

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Leave the data module serving images once this trainer is done with it."""
        if isinstance(trainer.datamodule, CrackDataModule):
            trainer.datamodule.feature_source = None

    def _backbone_digest(self, backbone: nn.Module) -> str:
        # Hashing 45 MB of weights takes a noticeable fraction of a second: only redo it when a
        # tensor was replaced (moved, reloaded) or modified in place (its version counter).
        fingerprint = tuple((t.data_ptr(), t._version) for t in backbone.state_dict().values())
        if fingerprint != self._fingerprint:
            self._fingerprint, self._fingerprint_digest = fingerprint, module_digest(backbone)
        return self._fingerprint_digest

    def dataset(self, split: str) -> FeatureDataset:
        """Features of the images of `split`, for the backbone as it is at this moment."""
        trainer = self._trainer
        module, datamodule = trainer.lightning_module, trainer.datamodule
        digest = self._backbone_digest(module.backbone)
        if digest != self._digest:
            self._features = cached_features(
                datamodule,
                module.backbone,
                module.hparams.get("backbone_runtime", "eager"),
                backbone_precision=module.hparams.get("backbone_precision", "fp32"),
                rebuild=datamodule.feature_cache == "rebuild" and not self._rebuilt,
                trainer=trainer,
                backbone_digest=digest,
            )
            self._digest, self._rebuilt = digest, True
            self._rows = {r.path: i for i, r in enumerate(datamodule.scan.records)}
        records = datamodule.splits[split]
        rows = torch.tensor([self._rows[r.path] for r in records], dtype=torch.long)
        return FeatureDataset(self._features[rows], [r.label for r in records])
