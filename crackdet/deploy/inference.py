"""Using a trained checkpoint outside training: loading it, its preprocessing, finding photos."""

from __future__ import annotations

import glob
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from crackdet.data.images import visible_files
from crackdet.data.transforms import eval_transform, resize_transform
from crackdet.errors import ConfigError
from crackdet.evaluation.threshold import DEFAULT_THRESHOLD, operating_point_of, stored_threshold
from crackdet.models.checkpoint import (
    DATA_SETTINGS_KEY,
    checkpoint_file,
    load_classifier,
    load_network,
    read_checkpoint,
)
from crackdet.models.runtime import FeatureFn, Normalization, build_feature_extractor

if TYPE_CHECKING:
    from crackdet.models.lightning_model import CrackClassifier
    from crackdet.models.torch_model import CrackNet

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


@dataclass
class LoadedCheckpoint:
    """A trained classifier in eval mode plus the preprocessing it was trained with."""

    path: Path
    #: The CrackClassifier (load_checkpoint), or the plain CrackNet it wraps (load_network).
    model: CrackClassifier | CrackNet
    image_size: int
    mean: list[float]
    std: list[float]
    stored_threshold: float | None
    #: The folder the model was trained on (may no longer exist where the checkpoint is used).
    data_dir: str | None = None
    #: The resize filter of training (checkpoints that predate the setting used bilinear).
    interpolation: str = "bilinear"
    #: The model settings the checkpoint records (the classifier's `hparams`).
    settings: dict[str, Any] = field(default_factory=dict)

    def transform(self, normalize: bool = True) -> v2.Compose:
        """The data set's eval preprocessing; `normalize=False` stops at RGB floats in [0, 1]."""
        if normalize:
            return eval_transform(self.image_size, self.mean, self.std, self.interpolation)
        return eval_transform(self.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), self.interpolation)

    def resize(self) -> v2.Compose:
        """The eval preprocessing up to its uint8 resize (a runner built with `normalization`
        normalises the batch, bit for bit as `transform()` would)."""
        return resize_transform(self.image_size, self.interpolation)

    @property
    def normalization(self) -> Normalization:
        """(mean, std) of training, for `backbone_runner`."""
        return (self.mean, self.std)


def recorded_data_settings(ckpt_path: str | Path) -> dict[str, Any]:
    """The training run's data settings that Lightning saved in the checkpoint (may be empty)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get(DATA_SETTINGS_KEY) or {})


def load_checkpoint(ckpt_path: str | Path | None) -> LoadedCheckpoint:
    """Load a training checkpoint on the CPU without needing the backbone's ImageNet weights."""
    model = load_classifier(ckpt_path)
    return _with_preprocessing(ckpt_path, model, dict(model.hparams))


def load_network_checkpoint(ckpt_path: str | Path | None) -> LoadedCheckpoint:
    """As `load_checkpoint`, with the plain network instead of the LightningModule around it.

    For inference only (predict.py): Lightning, whose import takes seconds, is not imported.
    """
    checkpoint = read_checkpoint(ckpt_path)  # read once: network, preprocessing and threshold
    net, settings = load_network(ckpt_path, checkpoint=checkpoint)
    return _with_preprocessing(ckpt_path, net, settings, checkpoint)


def _with_preprocessing(
    ckpt_path: str | Path | None,
    model: nn.Module,
    settings: dict[str, Any],
    checkpoint: dict[str, Any] | None = None,
) -> LoadedCheckpoint:
    """The loaded model with the preprocessing and threshold its checkpoint records."""
    path = checkpoint_file(ckpt_path)
    if checkpoint is None:
        data, threshold = recorded_data_settings(path), stored_threshold(path)
    else:
        data = dict(checkpoint.get(DATA_SETTINGS_KEY) or {})
        point = operating_point_of(checkpoint)
        threshold = None if point is None else point["threshold"]
    if "image_size" not in data:
        raise ConfigError(
            f"ckpt_path={path} does not record the data preprocessing (no "
            "datamodule_hyper_parameters): use a checkpoint written by `python train.py`."
        )
    return LoadedCheckpoint(
        path=path,
        model=model,
        image_size=int(data["image_size"]),
        mean=[float(v) for v in data["mean"]],
        std=[float(v) for v in data["std"]],
        stored_threshold=threshold,
        data_dir=data.get("data_dir"),
        interpolation=str(data.get("interpolation", "bilinear")),
        settings=settings,
    )


def resolve_threshold(
    override: float | None, stored: float | None, setting: str = "predict.threshold"
) -> tuple[float, str]:
    """The threshold to use and where it came from: `setting`, the checkpoint, or 0.5."""
    if override is not None:
        value, source = float(override), "setting"
    elif stored is not None:
        value, source = stored, "checkpoint"
    else:
        value, source = DEFAULT_THRESHOLD, "default"
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        origin = f"{setting}={value}" if source == "setting" else f"The {source} threshold {value}"
        raise ConfigError(f"{origin} must lie in [0, 1]; set {setting}=<p> in [0, 1].")
    return value, source


def backbone_runner(
    backbone: nn.Module,
    settings: Mapping[str, Any],
    runtime: str | None,
    precision: str | None,
    example_shape: tuple[int, int],
    device: torch.device,
    cache_dir: str | Path | None,
    normalization: Normalization | None = None,
) -> FeatureFn:
    """The checkpoint's backbone on a runtime; None takes the training run's choice (`settings`,
    the model settings the checkpoint records).

    `example_shape` is (batch size, image size); ONNX exports are kept under `cache_dir`. With
    `normalization` the runner takes uint8 images (`LoadedCheckpoint.resize`), as extraction does.
    """
    runtime = runtime or settings.get("backbone_runtime", "auto")
    precision = precision or settings.get("backbone_precision", "fp32")
    batch, size = example_shape
    example = torch.zeros(batch, 3, size, size)
    return build_feature_extractor(
        backbone, runtime, example, device, precision, cache_dir, normalization
    )


def pick_device(name: str) -> torch.device:
    """`auto` is the GPU when one is present, else the CPU; any other name is used as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"device={name} is not a torch device (auto, cpu, cuda, cuda:1)."
        ) from exc
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(
            f"device={name}: this machine has {torch.cuda.device_count()} usable GPU(s); use "
            "device=auto (a GPU when there is one) or device=cpu."
        )
    return device


def image_suffixes() -> set[str]:
    """File name endings Pillow has a decoder for (".jpg", ".png", ".tif", ...)."""
    return {suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _candidates(spec: str, setting: str) -> tuple[list[Path], bool]:
    """Files named by a file, folder or glob; the flag says whether they came from expansion."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], False
    if path.is_dir():
        return visible_files(path), True
    if _GLOB_CHARS & set(spec):
        matches = [Path(m) for m in glob.glob(str(path), recursive=True)]
        files = [m for m in matches if m.is_file()]
        files += [p for m in matches if m.is_dir() for p in visible_files(m)]
        if files:
            return files, True
        raise ConfigError(f"{setting}={spec} matches no files.")
    raise ConfigError(
        f"{setting}={spec}: no such file or folder. Give an image, a folder (searched "
        f"recursively) or a quoted glob such as {setting}='photos/**/*.jpg'."
    )


def find_images(spec: str | None, setting: str = "input") -> list[Path]:
    """Every image a file, folder (recursively) or glob names, sorted; other files are skipped.

    A single file is always returned, so an unreadable one is reported rather than ignored.
    From folders and globs, files whose ending Pillow does not know (.txt, .mp4, .heic without a
    plugin) and hidden files are skipped, and the skipped endings are logged.
    """
    if not spec:
        raise ConfigError(
            f"{setting} is not set. Give an image, a folder or a glob, e.g. {setting}=photos/."
        )
    files, expanded = _candidates(str(spec), setting)
    if not expanded:
        return files
    suffixes = image_suffixes()
    images, skipped = [], Counter()
    for file in sorted(set(files)):
        if file.name.startswith("."):
            continue
        if file.suffix.lower() in suffixes:
            images.append(file)
        else:
            skipped[file.suffix.lower() or "(no ending)"] += 1
    if skipped:
        log.info(
            "Skipped %d file(s) Pillow does not read: %s",
            sum(skipped.values()),
            ", ".join(f"{ext} x{n}" for ext, n in skipped.most_common()),
        )
    if not images:
        raise ConfigError(
            f"{setting}={spec} holds no image files (endings Pillow reads, e.g. .jpg .png .tif)."
        )
    return images


def spread_sample(items: Sequence[Any], n: int) -> list[Any]:
    """At most `n` items taken evenly across the sequence (so every sorted class folder is hit)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]
