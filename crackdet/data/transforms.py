"""Where images are turned into tensors: resizing, normalisation and augmentation presets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from crackdet.errors import ConfigError

#: Values of `data.interpolation`: the resize filters torchvision offers for tensors.
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")


class RandomRot90:
    """Rotate by a random multiple of 90 degrees: cracks have no preferred orientation."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, (1,)))
        return torch.rot90(image, k, dims=(-2, -1))


def interpolation_mode(interpolation: str) -> InterpolationMode:
    """`data.interpolation` as torchvision's enum; a ConfigError for an unknown filter."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"data.interpolation={interpolation} must be one of {list(INTERPOLATIONS)} "
            "(null: the backbone weights' own)."
        )
    return InterpolationMode(interpolation)


def _resize(image_size: int, interpolation: str) -> list:
    # Square resize, not crop: the whole photo is evidence, and the data set's images are square.
    return [
        v2.PILToTensor(),
        v2.Resize(
            (image_size, image_size),
            interpolation=interpolation_mode(interpolation),
            antialias=True,
        ),
    ]


def resize_transform(image_size: int, interpolation: str = "bilinear") -> v2.Compose:
    """RGB PIL image -> resized uint8 tensor (3, H, W): `eval_transform` up to its float steps.

    With `batch_normalizer` after it (on one image or a whole batch) the result is bit for bit
    `eval_transform`'s; bulk feature extraction decodes this way, as bytes, and normalises a batch
    at once (or lets the backbone runtime do it inside its compiled graph).
    """
    return v2.Compose(_resize(image_size, interpolation))


def batch_normalizer(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 images (..., 3, H, W) -> floats scaled to [0, 1] and normalised by `mean`/`std`."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def eval_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Deterministic preprocessing: RGB PIL image -> resized, normalised float tensor."""
    return v2.Compose(
        [*_resize(image_size, interpolation), *batch_normalizer(mean, std).transforms]
    )


def train_transform(
    augmentation: Mapping[str, Any],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Preprocessing plus the augmentations an `augmentation` preset switches on."""
    aug = dict(augmentation)
    mode = interpolation_mode(interpolation)
    steps: list = [v2.PILToTensor()]
    scale = aug.get("random_resized_crop_scale")
    if scale:
        steps.append(
            v2.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=mode, antialias=True)
        )
    else:
        steps.append(v2.Resize((image_size, image_size), interpolation=mode, antialias=True))
    if aug.get("hflip"):
        steps.append(v2.RandomHorizontalFlip(float(aug["hflip"])))
    if aug.get("vflip"):
        steps.append(v2.RandomVerticalFlip(float(aug["vflip"])))
    if aug.get("rot90"):
        steps.append(RandomRot90())
    if aug.get("rotation_degrees"):
        steps.append(v2.RandomRotation(float(aug["rotation_degrees"])))
    jitter = aug.get("color_jitter")
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    sigma = aug.get("blur_sigma")
    if sigma:
        steps.append(v2.RandomApply([v2.GaussianBlur(3, sigma=tuple(sigma))], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def is_deterministic(augmentation: Mapping[str, Any]) -> bool:
    """True when the preset switches on no random augmentation at all."""
    keys = (
        "random_resized_crop_scale",
        "hflip",
        "vflip",
        "rot90",
        "rotation_degrees",
        "color_jitter",
        "blur_sigma",
    )
    return not any(augmentation.get(k) for k in keys)


def denormalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Undo normalisation for display, clamped to [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(-1, 1, 1)
    return (images * s + m).clamp(0, 1)
