"""The LightningDataModule: folder -> checked records -> split -> batched tensors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset

from crackdet.data.dataset import ImageRecordDataset
from crackdet.data.manifest import (
    MANIFEST_NAME,
    STATE_KEY,
    ManifestMatch,
    SplitManifest,
    differences,
    match_folder,
)
from crackdet.data.resumable import ResumableDataLoader, ResumableSampler
from crackdet.data.scan import (
    ImageRecord,
    ScanResult,
    bad_files_table,
    format_bad_files,
    scan_folder,
    shown,
)
from crackdet.data.splits import SPLIT_MODES, Splits, reference_split, stratified_split
from crackdet.data.synthetic import make_synthetic_dataset
from crackdet.data.transforms import (
    eval_transform,
    interpolation_mode,
    is_deterministic,
    train_transform,
)
from crackdet.distributed import eval_sampler
from crackdet.errors import ConfigError, DataError
from crackdet.io import atomic_write_text
from crackdet.models.backbone import preprocessing

log = logging.getLogger(__name__)


class CrackDataModule(L.LightningDataModule):
    """Images in `<data_dir>/<class folder>/`, labelled by folder, split and batched."""

    def __init__(
        self,
        data_dir: str,
        classes: Mapping[str, Sequence[str]] | None = None,
        image_size: int | None = None,
        batch_size: int = 100,
        num_workers: int = 2,
        split: str = "seed",
        train_fraction: float = 0.75,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        split_seed: int = 42,
        augmentation: Mapping[str, Any] | None = None,
        on_bad_image: str = "error",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
        cache_dir: str | None = None,
        output_dir: str | None = None,
        synthetic: Mapping[str, int] | None = None,
        pin_memory: bool = False,
        feature_cache: str = "auto",
        manifest: SplitManifest | None = None,
    ):
        super().__init__()
        # Unset: what the default backbone's weights expect (the configs take it from model.*).
        default = preprocessing()
        classes = dict(classes or {"negative": ["Negative"], "positive": ["Positive"]})
        self.classes = {k: [v] if isinstance(v, str) else list(v) for k, v in classes.items()}
        self.data_dir = str(data_dir)
        self.image_size = int(default.image_size if image_size is None else image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.split = split
        self.train_fraction = float(train_fraction)
        self.fractions = [float(f) for f in fractions]
        # seed=null leaves training unseeded, but a split must still be the same on every run.
        self.split_seed = 0 if split_seed is None else int(split_seed)
        self.augmentation = dict(augmentation or {})
        self.on_bad_image = on_bad_image
        self.mean = list(default.mean if mean is None else mean)
        self.std = list(default.std if std is None else std)
        self.interpolation = str(default.interpolation if interpolation is None else interpolation)
        interpolation_mode(self.interpolation)
        self.cache_dir = cache_dir
        self.output_dir = output_dir
        self.synthetic = dict(synthetic) if synthetic else None
        self.pin_memory = pin_memory
        self.feature_cache = feature_cache
        #: A training run's manifest to take the splits from (eval) instead of splitting anew.
        self.given_manifest = manifest
        self._check_settings()
        self.save_hyperparameters(
            {
                "data_dir": self.data_dir,
                "classes": self.classes,
                "image_size": self.image_size,
                "batch_size": self.batch_size,
                "split": self.split,
                "train_fraction": self.train_fraction,
                "fractions": self.fractions,
                "split_seed": self.split_seed,
                "augmentation": self.augmentation,
                "mean": self.mean,
                "std": self.std,
                "interpolation": self.interpolation,
            }
        )
        self.splits: Splits | None = None
        self.scan: ScanResult | None = None
        self.n_duplicate_groups = 0
        #: Which image was in which split, with its fingerprint (after setup).
        self.manifest: SplitManifest | None = None
        #: With a given manifest: which of its images were found unchanged (after setup).
        self.manifest_match: ManifestMatch | None = None
        self._manifest_written = False
        self.datasets: dict[str, ImageRecordDataset] = {}
        #: Set by crackdet.training.feature_cache.FeatureCache: split name -> dataset of backbone features that
        #: the loaders serve instead of images (`datasets` keep the images, for figures and paths).
        self.feature_source: Callable[[str], Dataset] | None = None

    def _check_settings(self) -> None:
        if self.split not in SPLIT_MODES:
            raise ConfigError(f"data.split={self.split} is not one of {list(SPLIT_MODES)}.")
        if self.feature_cache not in ("auto", "off", "rebuild"):
            raise ConfigError(
                f"data.feature_cache={self.feature_cache} must be 'auto', 'off' or 'rebuild'."
            )
        if self.on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image={self.on_bad_image} must be 'error' or 'skip'.")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} must be a positive integer.")
        if self.image_size < 32:
            raise ConfigError(
                f"data.image_size={self.image_size} is too small for the backbone; use 32 or more."
            )
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be 0 or more.")
        if not 0 < self.train_fraction < 1:
            raise ConfigError(
                f"data.train_fraction={self.train_fraction} must lie strictly between 0 and 1."
            )

    @property
    def deterministic_train_transform(self) -> bool:
        """True when training images get no random augmentation."""
        return is_deterministic(self.augmentation)

    def prepare_data(self) -> None:
        """Generate the synthetic data set if configured, and check every file, in one process.

        Lightning calls this on one process per machine, before the others set up: with
        several processes they then read the checked files from the scan cache instead of each
        decoding the whole folder again.
        """
        if self.synthetic:
            make_synthetic_dataset(self.data_dir, **self.synthetic)
        if self.scan is None:  # Lightning calls this again for every validate/test
            self.scan = scan_folder(self.data_dir, self.classes, cache_dir=self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Scan and check the folder, then split it; done once however often it is called.

        Fitting also writes the split manifest into the run directory (`split_manifest.csv`).
        """
        if self.splits is None:
            self._setup_splits()
        if stage == "fit" and self.output_dir and not self._manifest_written:
            self._write_manifest(Path(self.output_dir) / MANIFEST_NAME)
            self._manifest_written = True

    def _setup_splits(self) -> None:
        if self.synthetic:
            # Every rank needs the files; generation is idempotent and writes atomically.
            make_synthetic_dataset(self.data_dir, **self.synthetic)
        if self.scan is None:  # set up without prepare_data (or in another process than it)
            self.scan = scan_folder(self.data_dir, self.classes, cache_dir=self.cache_dir)
        self._log_links(self.scan)
        records = self.scan.records
        if self.given_manifest is not None:
            # Unreadable files are either the manifest's (reported as changed) or not evaluated.
            self.manifest_match = match_folder(
                self.given_manifest, records, self.scan.bad_files, self.data_dir
            )
            self.splits = self.manifest_match.splits
            self.manifest = self.given_manifest
        else:
            if self.scan.bad_files:
                self._handle_bad_files(self.scan.bad_files)
            self.splits = self._split(records)
            self.manifest = SplitManifest.from_splits(self.splits, self.data_dir)
        for name in ("train", "val", "test"):
            if name == "train" and not self.deterministic_train_transform:
                transform = train_transform(
                    self.augmentation, self.image_size, self.mean, self.std, self.interpolation
                )
            else:
                transform = eval_transform(self.image_size, self.mean, self.std, self.interpolation)
            self.datasets[name] = ImageRecordDataset(self.splits[name], transform)
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        rank_zero_info(f"Data: {len(records)} images in {self.data_dir} ({sizes}).")

    def _split(self, records: list[ImageRecord]) -> Splits:
        if self.split == "seed":
            return reference_split(records, self.train_fraction)
        if self.split == "stratified":
            splits, self.n_duplicate_groups = stratified_split(
                records, self.fractions, self.split_seed
            )
            rank_zero_info(
                f"Found {self.n_duplicate_groups} group(s) of byte-identical files; "
                "each group is kept within one split."
            )
            return splits
        return {"train": [], "val": [], "test": list(records)}

    def _log_links(self, scan: ScanResult) -> None:
        if scan.links_followed:
            rank_zero_info(
                f"Followed {scan.links_followed} symbolic link(s) below the class folders of "
                f"{self.data_dir}: the files they point to are read as images."
            )
        if scan.repeated_folders and rank_zero_only.rank == 0:
            log.warning(
                f"{len(scan.repeated_folders)} symbolic link(s) lead to a folder already listed "
                "(a loop, or a second link to it); its images are counted once: "
                + ", ".join(shown(p) for p in scan.repeated_folders[:5])
            )

    def _write_manifest(self, path: Path) -> None:
        # Every process checks an existing manifest (so all of them stop together); rank 0 writes.
        if path.is_file():
            changes = differences(SplitManifest.read_csv(path), self.manifest)
            if not changes:
                return  # resuming in the run directory, on the same images
            raise DataError(
                f"{path} records another split than {self.data_dir} gives now: {changes}. "
                "Restore the images as listed there, or start a new run (leave hydra.run.dir "
                "unset); the manifest of a run is never overwritten."
            )
        if rank_zero_only.rank == 0:
            atomic_write_text(path, self.manifest.csv_text())
            rank_zero_info(f"Split manifest: {path} ({len(self.manifest.entries)} images).")

    def state_dict(self) -> dict[str, Any]:
        """The split manifest, saved in every checkpoint (plain values: weights_only loads work)."""
        return {STATE_KEY: self.manifest.to_state()} if self.manifest is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to resume (or test) a checkpoint on another split than the one it was trained on."""
        recorded = state_dict.get(STATE_KEY)
        if not recorded or self.manifest is None or self.given_manifest is not None:
            return
        changes = differences(SplitManifest.from_state(recorded), self.manifest)
        if changes:
            raise DataError(
                "The checkpoint was trained on another split of the images than "
                f"data.data_dir={self.data_dir} gives now: {changes}. Restore the folder as the "
                "run's split_manifest.csv lists it, or start a new run."
            )

    def _handle_bad_files(self, bad_files: list[tuple[str, str]]) -> None:
        report = format_bad_files(bad_files)
        if self.on_bad_image == "error":
            raise DataError(
                f"data.data_dir={self.data_dir} holds {report}\n"
                "Remove or replace these files, or set data.on_bad_image=skip to train without "
                "them (the list is then written to bad_files.txt in the run directory)."
            )
        rank_zero_info(f"Skipping {report}")
        if self.output_dir:
            self._write_bad_files(bad_files)

    @rank_zero_only
    def _write_bad_files(self, bad_files: list[tuple[str, str]]) -> None:
        atomic_write_text(Path(self.output_dir) / "bad_files.txt", bad_files_table(bad_files))

    def has_split(self, name: str) -> bool:
        """True when split `name` holds at least one image (after setup)."""
        return bool(self.splits and self.splits[name])

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        features = self.feature_source(name) if self.feature_source else None
        dataset = self.datasets[name] if features is None else features
        if not len(dataset):
            raise DataError(
                f"The {name} split is empty for data.split={self.split} on {self.data_dir}."
            )
        # Own generators seeded by the run's seed: the batch order is the same with or without
        # workers or cached features, and loaders never draw from the global stream (dropout).
        seed = torch.initial_seed()
        # Training: an order fixed by (seed, epoch), shared out between processes and resumable
        # mid-epoch (crackdet.data.resumable); evaluation must see every sample once.
        if shuffle:
            sampler = ResumableSampler(dataset)
        else:
            sampler = eval_sampler(dataset, self.trainer, name)
        # Cached features are in memory: worker processes would only add start-up time.
        workers = self.num_workers if features is None else 0
        return (ResumableDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the shuffle follows the run's seed)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self._loader("test", shuffle=False)
