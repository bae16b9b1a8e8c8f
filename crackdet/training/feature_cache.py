"""Backbone features computed once per image content and backbone, kept on disk, served as datasets.

With a frozen backbone in eval mode and deterministic preprocessing, an image's features never
change. They are kept in `<cache_dir>/features/<settings key>/`, a folder per setting (weights,
preprocessing, numerics) holding chunk files that map each image's content fingerprint to its
features. Later epochs, every job of a sweep and every Optuna trial train the head on them in
seconds; an image that is new or whose bytes changed is the only one extracted again. Chunks are
written atomically as extraction goes, so an interrupted extraction continues where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import PIL
import torch
import torchvision
from filelock import FileLock, Timeout
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
from crackdet.data.transforms import batch_normalizer, resize_transform
from crackdet.errors import ConfigError, DataError
from crackdet.io import atomic_write_bytes
from crackdet.models.runtime import FeatureFn, build_feature_extractor, module_digest

log = logging.getLogger(__name__)

MODES = ("auto", "off", "rebuild")
#: Bump when the file layout or the way features are computed changes.
FORMAT_VERSION = 2
#: New features are saved every this many images: a crash or SIGKILL loses at most this many.
CHUNK_IMAGES = 1024
_FLOAT32_PRECISIONS = ("32-true", "32")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class FeatureDataset(Dataset):
    """Yields (features, label, index), in the order of the image dataset of the same split."""

    def __init__(self, features: torch.Tensor, labels: Sequence[int]):
        self.features = features
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.features[index], self.labels[index], index


class ExtractionInterrupted(SystemExit):
    """Feature extraction stopped on a signal; the exit status is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def usage_problem(datamodule: CrackDataModule, model: L.LightningModule) -> str | None:
    """Why cached features cannot stand in for the backbone in this run, or None when they can."""
    hparams = model.hparams
    if datamodule.feature_cache == "off":
        return "data.feature_cache=off"
    if hparams.get("trainable", "head") != "head":
        return (
            f"model.trainable={hparams.get('trainable')}: backbone weights train, so its "
            "features change"
        )
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


def image_fingerprints(records: Sequence[ImageRecord]) -> list[str]:
    """The content fingerprint of each record's file, as the scan read it on this run.

    The scan hashes every file's bytes on every run (`crackdet.data.scan.FINGERPRINT`), so a file
    replaced with the same size and modification time (`cp -p`, restores) has a new one.
    """
    return [r.digest for r in records]


def numerics_fields(
    runtime: str, precision: str, backbone_precision: str = "fp32"
) -> dict[str, str]:
    """The cache key's runtime and precision fields: only what changes the features' values.

    Every float32 runtime (eager, compile, onnxruntime) computes the same features to about
    1e-6 (ResNet18, ONNX Runtime against eager: 4e-7 of the largest feature), so they share one
    cache. Reduced or other precisions change the features, and by how much depends on the
    runtime's kernels: those are keyed by precision and runtime. A new runtime or precision
    option decides here whether it shares the float32 cache.
    """
    if backbone_precision != "fp32":  # model.backbone_precision=bf16: its own features
        return {"numerics": f"backbone-{backbone_precision}", "runtime": runtime}
    if precision in _FLOAT32_PRECISIONS:
        return {"numerics": "float32"}
    return {"numerics": precision, "runtime": runtime}


def settings_key(
    backbone_digest: str,
    datamodule: CrackDataModule,
    runtime: str,
    precision: str,
    backbone_precision: str = "fp32",
) -> str:
    """The name of the features computed under these weights, preprocessing and numerics."""
    description = {
        "format": FORMAT_VERSION,
        "backbone": backbone_digest,
        "image_size": datamodule.image_size,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "interpolation": datamodule.interpolation,
        **numerics_fields(runtime, precision, backbone_precision),
        # Decoding, resizing and kernels may change between releases: new versions, new features.
        "versions": [torch.__version__, torchvision.__version__, PIL.__version__],
    }
    encoded = json.dumps(description, sort_keys=True).encode()
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def _checksum(features: torch.Tensor) -> str:
    return hashlib.blake2b(features.contiguous().numpy(), digest_size=16).hexdigest()


class FeatureStore:
    """The features of one setting, by image content: a folder of atomically written chunks."""

    def __init__(self, folder: Path, key: str):
        self.folder = folder
        self.key = key
        #: False once the disk was found full: the run goes on with its features in memory.
        self.writable = True

    def read(self) -> dict[str, torch.Tensor]:
        """Every stored feature row by fingerprint; unusable chunks are warned about and skipped."""
        try:
            paths = sorted(self.folder.glob("*.pt"))
        except OSError as exc:
            log.warning("Feature cache %s cannot be read (%s); extracting again.", self.folder, exc)
            return {}
        rows: dict[str, torch.Tensor] = {}
        for path in paths:
            try:
                rows.update(self._read_chunk(path))
            except Exception as exc:  # truncated zip, unpickling errors, missing keys: damaged
                log.warning(
                    "Feature cache %s is damaged (%s: %s); its images are extracted again.",
                    path,
                    type(exc).__name__,
                    exc,
                )
                with suppress(OSError):  # a read-only cache: the warning comes again next time
                    path.unlink(missing_ok=True)
        return rows

    def clear(self) -> None:
        """Forget every stored feature of this setting (data.feature_cache=rebuild)."""
        for path in self.folder.glob("*.pt"):
            path.unlink(missing_ok=True)

    def _read_chunk(self, path: Path) -> dict[str, torch.Tensor]:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        features, fingerprints = stored["features"], stored["fingerprints"]
        # The key covers the backbone, so its feature width is the backbone's own.
        if stored["key"] != self.key or features.ndim != 2 or len(features) != len(fingerprints):
            raise ValueError(f"it holds other features (shape {tuple(features.shape)})")
        if features.dtype != torch.float32 or stored["checksum"] != _checksum(features):
            raise ValueError("its contents do not match their checksum")
        return dict(zip(fingerprints, features, strict=True))

    def write(self, fingerprints: Sequence[str], features: torch.Tensor) -> None:
        """Save one chunk atomically; a full disk turns saving off with a warning, not an error."""
        if not self.writable or not fingerprints:
            return
        name = hashlib.blake2b("\n".join(fingerprints).encode(), digest_size=16).hexdigest()
        buffer = io.BytesIO()
        stored = {
            "format": FORMAT_VERSION,
            "key": self.key,
            "fingerprints": list(fingerprints),
            "features": features.contiguous(),
            "checksum": _checksum(features),
        }
        torch.save(stored, buffer)
        try:
            atomic_write_bytes(self.folder / f"{name}.pt", buffer.getvalue())
        except OSError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            if cause.errno not in _DISK_FULL:
                raise
            self.writable = False
            log.warning(
                "Feature cache not saved: the disk holding %s is full; the run continues with "
                "the features in memory (they are extracted again next time).",
                self.folder,
            )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this setting's lock: another job needing the same features waits here."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder.with_suffix(".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info(
                "Another job is extracting these features; waiting for it (%s).", lock.lock_file
            )
            lock.acquire()
        try:
            yield
        finally:
            lock.release()


class _RateColumn(ProgressColumn):
    """Images per second, averaged over the last 30 s."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.1f} images/s", style="progress.data.speed")


def _progress(show: bool) -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not show)


class _NamedFailures(ImageRecordDataset):
    """Its decoding errors name the file (read in this process, a bare decoder error would not)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        try:
            return super().__getitem__(index)
        except Exception as exc:  # any decoder failure
            raise OSError(f"{self.records[index].path}: {type(exc).__name__}: {exc}") from exc


def extract_batches(
    datamodule: CrackDataModule,
    extract: FeatureFn,
    records: Sequence[ImageRecord],
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(positions in `records`, features) batch by batch.

    Images are decoded to uint8 and `extract` normalises them (see `_extractor`). On a CPU they
    are decoded in this process, between batches: the backbone keeps every core busy, and a
    DataLoader worker decoding meanwhile takes them from it (2 cores, OpenVINO: 0.90-0.93 of the
    in-memory speed decoding here, 0.86-0.88 with one worker). On a GPU workers decode meanwhile.
    """
    transform = resize_transform(datamodule.image_size, datamodule.interpolation)
    workers = datamodule.num_workers
    if device is None or device.type == "cpu":
        workers = 0
    loader = DataLoader(
        _NamedFailures(records, transform),
        batch_size=datamodule.batch_size,
        num_workers=workers,
        pin_memory=datamodule.pin_memory,
    )
    batches = iter(loader)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # a file that changed since the scan and no longer decodes
            # A worker's error carries its traceback as text: keep the last line, which names
            # the file (_NamedFailures).
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise DataError(
                f"Cannot extract backbone features: {reason}. An image named here changed "
                "after the data folder was checked: replace or remove it and run again."
            ) from exc
        if batch is None:
            return
        images, _, index = batch
        yield index, extract(images).float().cpu()


def extract_features(
    datamodule: CrackDataModule,
    extract: FeatureFn,
    records: Sequence[ImageRecord],
    show_progress: bool = True,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Features of `records`' images, in their order, with a progress bar (no cache involved)."""
    features: torch.Tensor | None = None
    with _progress(show_progress) as progress:
        task = progress.add_task("Extracting backbone features", total=len(records))
        for index, batch in extract_batches(datamodule, extract, records, device):
            if features is None:  # the width is the backbone's (512 for resnet18)
                features = torch.empty(len(records), batch.shape[1])
            features[index] = batch
            progress.advance(task, len(index))
    return torch.empty(0, 0) if features is None else features


def _extractor(
    datamodule: CrackDataModule,
    backbone: nn.Module,
    runtime: str,
    backbone_precision: str,
    precision: Precision,
    device: torch.device | None,
) -> FeatureFn:
    if runtime == "auto" and precision.precision not in _FLOAT32_PRECISIONS:
        runtime = "eager"  # the one runtime that follows Lightning's precision plugin
    if runtime != "eager" and precision.precision not in _FLOAT32_PRECISIONS:
        raise ConfigError(
            f"model.backbone_runtime={runtime} computes float32 features, but "
            f"trainer.precision={precision.precision}: use model.backbone_runtime=eager."
        )
    example = torch.zeros(datamodule.batch_size, 3, datamodule.image_size, datamodule.image_size)
    normalization = (datamodule.mean, datamodule.std)
    if precision.precision in _FLOAT32_PRECISIONS:
        return build_feature_extractor(
            backbone,
            runtime,
            example,
            device,
            backbone_precision,
            datamodule.cache_dir,
            normalization,
        )
    extract = build_feature_extractor(
        backbone, runtime, example, device, backbone_precision, datamodule.cache_dir
    )
    normalize = batch_normalizer(*normalization)

    def run(images: torch.Tensor) -> torch.Tensor:
        # The same autocast / dtype as the training step, so features match the uncached path.
        with precision.forward_context():
            return extract(precision.convert_input(normalize(images)))

    return run


class _StopRequest:
    """Ctrl-C or SIGTERM during extraction: a flag checked after every batch (a second: stop now)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._pid = os.getpid()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the extracting process decides
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop at once; the chunks saved so far stay
        self.signum = signum
        log.warning(
            "Received %s: feature extraction stops after this batch and keeps the features "
            "computed so far (send it again to stop at once).",
            signal.Signals(signum).name,
        )

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        """Handle SIGINT/SIGTERM while extracting, then give them back to their earlier handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals only reach the main thread
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        earlier = {signum: signal.getsignal(signum) for signum in stops}
        for signum in stops:
            signal.signal(signum, self._on_signal)
        try:
            yield self
        finally:
            for signum, handler in earlier.items():
                signal.signal(signum, handler)


class _Ranks:
    """The processes of a run: this one's rank, and exchanges in which a failure stops all of them."""

    def __init__(self, trainer: L.Trainer | None):
        self.trainer = trainer
        self.rank, self.world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def exchange(self, payload: Any, error: BaseException | None = None) -> list[Any]:
        """Every rank's payload; if any rank brings an error, all raise (none waits forever)."""
        message = None if error is None else str(error)
        gathered = [(payload, message)]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, (payload, message))
        if error is not None:
            raise error
        for rank, (_, message) in enumerate(gathered):
            if message is not None:
                raise DataError(f"Process {rank} of {self.world} failed, so all stop: {message}")
        return [p for p, _ in gathered]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        return value if self.world == 1 else self.trainer.strategy.broadcast(value)


def _as_user_error(exc: Exception, cache_dir: str) -> Exception:
    if isinstance(exc, OSError):
        return DataError(
            f"Cannot keep backbone features in paths.cache_dir={cache_dir} "
            f"({type(exc).__name__}: {exc}). Point paths.cache_dir at a writable folder, or set "
            "data.feature_cache=off."
        )
    return exc


def _attempt(work: Callable[[], Any], cache_dir: str) -> tuple[Any, Exception | None]:
    try:
        return work(), None
    except Exception as exc:
        return None, _as_user_error(exc, cache_dir)


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
    """Features of every image of `datamodule` (scan order): cached ones loaded, the rest extracted.

    Rank 0 fingerprints the images, reads the cache and saves new features in chunks; with a
    multi-process `trainer` every rank extracts its share. Ctrl-C/SIGTERM stops after the batch
    in progress, with what was extracted saved (ExtractionInterrupted). The run's random streams
    are left untouched, so cached and uncached runs shuffle alike.
    """
    records = datamodule.scan.records
    precision = trainer.precision_plugin if trainer else Precision()
    ranks = _Ranks(trainer)
    digest = backbone_digest or module_digest(backbone)
    key = settings_key(digest, datamodule, runtime, precision.precision, backbone_precision)
    store = FeatureStore(Path(datamodule.cache_dir) / "features" / key, key)
    features = torch.empty(len(records), backbone.feature_dim)
    with isolate_rng(), ExitStack() as held:
        fingerprints: list[str] = []  # rank 0's only: it alone reads and writes the cache

        def plan() -> list[int]:
            held.enter_context(store.lock())
            fingerprints.extend(image_fingerprints(records))
            if rebuild:
                store.clear()
            stored = store.read()
            missing = []
            for row, fingerprint in enumerate(fingerprints):
                if fingerprint in stored:
                    features[row] = stored[fingerprint]
                else:
                    missing.append(row)
            return missing

        result, error = _attempt(plan, datamodule.cache_dir) if ranks.rank == 0 else (None, None)
        missing = ranks.exchange(result, error)[0]
        if missing:
            _log_extraction(records, missing, rebuild, runtime, ranks.rank)
            start = time.perf_counter()
            _extract_missing(
                datamodule,
                backbone,
                runtime,
                backbone_precision,
                precision,
                ranks,
                store,
                features,
                fingerprints,
                missing,
            )
            if ranks.rank == 0:
                seconds = time.perf_counter() - start
                log.info(
                    "Extracted %d features in %.1f s (%.1f images/s, %s backbone)%s.",
                    len(missing),
                    seconds,
                    len(missing) / seconds,
                    runtime,
                    f"; saved in {store.folder}" if store.writable else "",
                )
        elif ranks.rank == 0:
            log.info(
                "Loaded features of %d images from %s; the backbone will not run on them.",
                len(records),
                store.folder,
            )
    return ranks.broadcast(features)


def _log_extraction(
    records: Sequence[ImageRecord], missing: list[int], rebuild: bool, runtime: str, rank: int
) -> None:
    if rank:
        return
    if rebuild:
        why = "rebuild requested"
    elif len(missing) == len(records):
        why = "no cached features"
    else:
        examples = ", ".join(Path(records[i].path).name for i in missing[:3])
        why = (
            f"{len(records) - len(missing)} loaded from the cache; {len(missing)} new or changed "
            f"since cached, e.g. {examples}"
        )
    log.info(
        "Extracting features of %d of %d images with the %s backbone (%s) ...",
        len(missing),
        len(records),
        runtime,
        why,
    )


def _extract_missing(
    datamodule: CrackDataModule,
    backbone: nn.Module,
    runtime: str,
    backbone_precision: str,
    precision: Precision,
    ranks: _Ranks,
    store: FeatureStore,
    features: torch.Tensor,
    fingerprints: list[str],
    missing: list[int],
) -> None:
    """Fill `features[missing]` (on rank 0), saving chunks as they complete; stop on a signal.

    Every rank takes every `world`-th missing image; after each batch the ranks exchange their
    features, any failure and any stop request, so all of them stop at the same batch.
    """
    device = ranks.trainer.strategy.root_device if ranks.trainer else None
    extract, error = _attempt(
        lambda: _extractor(datamodule, backbone, runtime, backbone_precision, precision, device),
        datamodule.cache_dir,
    )
    ranks.exchange(None, error)
    share = missing[ranks.rank :: ranks.world]
    steps = -(-len(missing[:: ranks.world]) // datamodule.batch_size)  # rank 0 has the most
    pending: list[int] = []

    def save(rows: list[int]) -> None:
        store.write([fingerprints[r] for r in rows], features[rows])

    stop = _StopRequest()
    signums: list[int] = []
    completed = 0
    with stop.installed(), _progress(ranks.rank == 0) as progress:
        task = progress.add_task("Extracting backbone features", total=len(missing))
        records = [datamodule.scan.records[r] for r in share]
        batches = extract_batches(datamodule, extract, records, device)
        try:
            for step in range(steps + 1):
                # A last round, or the round after a stop request, only saves what is pending.
                final = step == steps or bool(signums)

                def work(final: bool = final) -> tuple[list[int], torch.Tensor] | None:
                    if ranks.rank == 0 and pending and (final or len(pending) >= CHUNK_IMAGES):
                        save(pending)
                        pending.clear()
                    batch = None if final else next(batches, None)
                    return (
                        None if batch is None else ([share[i] for i in batch[0].tolist()], batch[1])
                    )

                done, error = _attempt(work, datamodule.cache_dir)
                gathered = ranks.exchange((done, stop.signum), error)
                signums = [s for _, s in gathered if s is not None]
                if final:
                    break
                for rows, batch in (d for d, _ in gathered if d is not None):
                    features[rows] = batch
                    pending.extend(rows)
                    completed += len(rows)
                    progress.advance(task, len(rows))
        finally:
            batches.close()
            if ranks.rank == 0 and pending:  # leaving on an error: keep what was extracted
                try:
                    save(pending)
                except OSError as exc:
                    log.warning("Could not save the last features extracted (%s).", exc)
    if signums:
        if ranks.rank == 0:
            saved = f"saved in {store.folder}" if store.writable else "not saved (disk full)"
            log.warning(
                "Feature extraction stopped on %s: the features of %d of %d images are %s; "
                "run the same command again to continue from them.",
                signal.Signals(signums[0]).name,
                len(features) - len(missing) + completed,
                len(features),
                saved,
            )
        raise ExtractionInterrupted(signums[0])


class FeatureCache(L.Callback):
    """Serves cached backbone features instead of images when they cannot change (data.feature_cache).

    Decides at setup (and logs why not). The features are extracted or loaded when Lightning asks
    for a data loader: by then a checkpoint being resumed or evaluated is in the backbone, and
    every process of a multi-process run takes part.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._module: L.LightningModule | None = None
        self._features: torch.Tensor | None = None
        self._features_digest: str | None = None
        self._digest: str | None = None
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
        if trainer.ckpt_path is not None or pl_module is not self._module:
            # A checkpoint is loaded after setup: hash the weights again once it is in.
            self._digest = None
        self._trainer, self._module = trainer, pl_module
        datamodule.feature_source = self.dataset

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Leave the data module serving images once this trainer is done with it."""
        if isinstance(trainer.datamodule, CrackDataModule):
            trainer.datamodule.feature_source = None

    def dataset(self, split: str) -> FeatureDataset:
        """Features of the images of `split`, for the backbone as it is at this moment."""
        trainer = self._trainer
        module, datamodule = trainer.lightning_module, trainer.datamodule
        if self._digest is None:
            # The frozen backbone changes only when a checkpoint is loaded into it, so its
            # weights are hashed once per run and once per checkpoint (0.14 s for ResNet18).
            self._digest = module_digest(module.backbone)
        if self._digest != self._features_digest:
            self._features = cached_features(
                datamodule,
                module.backbone,
                module.hparams.get("backbone_runtime", "eager"),
                backbone_precision=module.hparams.get("backbone_precision", "fp32"),
                rebuild=datamodule.feature_cache == "rebuild" and not self._rebuilt,
                trainer=trainer,
                backbone_digest=self._digest,
            )
            self._features_digest, self._rebuilt = self._digest, True
            self._rows = {r.path: i for i, r in enumerate(datamodule.scan.records)}
        records = datamodule.splits[split]
        rows = torch.tensor([self._rows[r.path] for r in records], dtype=torch.long)
        return FeatureDataset(self._features[rows], [r.label for r in records])
