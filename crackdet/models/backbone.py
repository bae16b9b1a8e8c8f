"""Where the backbone (any torchvision classification model) is built and its weights resolved.

`model.backbone` names a model of torchvision's registry (`torchvision.models.list_models`);
`model.weights` names one of its weights enums, a local state-dict file, or null. The
classifier's last Linear layer is removed: its input width is the feature width, and the
preprocessing (input size, mean/std) comes from the chosen weights' metadata.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from crackdet.errors import ConfigError, WeightsError
from crackdet.models.options import DEFAULT_BACKBONE


@cache
def classification_models() -> tuple[str, ...]:
    """Names of every classification model in torchvision's registry (resnet18, convnext_tiny...)."""
    return tuple(list_models(module=torchvision.models))


def check_backbone(name: str) -> str:
    """Return `name` when torchvision has a classification model of that name, else raise."""
    models = classification_models()
    if name not in models:
        close = difflib.get_close_matches(str(name), models, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.backbone={name} is not a torchvision classification model.{hint} "
            f"Available: {', '.join(models)}."
        )
    return name


def torchvision_cache_file(weights: WeightsEnum) -> Path:
    """Where torchvision's loader looks for (and downloads) a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _enum_weights(name: str, backbone: str) -> WeightsEnum:
    enum = get_model_weights(backbone)
    # "IMAGENET1K_V2", "DEFAULT" or the qualified "ResNet50_Weights.IMAGENET1K_V2".
    member = name.removeprefix(f"{enum.__name__}.")
    try:
        return enum[member]
    except KeyError:
        raise WeightsError(
            f"model.weights={name} is neither a torchvision {backbone} weights name "
            f"({', '.join(enum.__members__)}), nor an existing file, nor null."
        ) from None


def _download_enum_weights(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    target = torchvision_cache_file(weights)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # network, HTTP, hash and disk errors all leave us without weights
        raise WeightsError(
            f"Could not get the ImageNet weights model.weights={weights.name} "
            f"({type(exc).__name__}: {exc}).\n"
            f"torchvision looks for them at {target} (from {weights.url}).\n"
            "Fix: on a machine with internet, download that URL and copy the file to that path "
            f"(or set TORCH_HOME), or pass a local file with model.weights=/path/to/{target.name}. "
            "For a run without pretrained weights, set model.weights=null explicitly."
        ) from exc


def _file_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"model.weights={path} could not be read as a PyTorch state dict "
            f"({type(exc).__name__}: {exc}). Save one with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(
            f"model.weights={path} holds a {type(state).__name__}, not a state dict."
        )
    return state


def weights_identity(weights: str | None) -> str:
    """A string that changes whenever the weights do: the enum name, or the file's hash."""
    if weights is None:
        return "random-init"
    path = Path(str(weights)).expanduser()
    if path.is_file():
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        return f"file:{digest}"
    return f"torchvision:{weights}"


def resolve_weights(
    weights: str | None, backbone: str = DEFAULT_BACKBONE
) -> Path | WeightsEnum | None:
    """`model.weights` as an existing file or a torchvision weights enum; nothing is read yet."""
    check_backbone(backbone)
    if weights is None:
        return None
    path = Path(str(weights)).expanduser()
    if path.is_file():
        return path
    if "/" in str(weights) or str(weights).endswith((".pt", ".pth", ".bin")):
        raise WeightsError(
            f"model.weights={weights}: no such file. Give an existing state-dict file, a "
            f"torchvision {backbone} weights name ({', '.join(get_model_weights(backbone).__members__)}) "
            "or null."
        )
    return _enum_weights(str(weights), backbone)


@dataclass(frozen=True)
class Preprocessing:
    """What the backbone expects of an image: square input size, resize filter, normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: torchvision's InterpolationMode value the weights were evaluated with ("bilinear", ...).
    interpolation: str = "bilinear"


def preprocessing(backbone: str = DEFAULT_BACKBONE, weights: str | None = None) -> Preprocessing:
    """The input size, resize filter and mean/std of the chosen weights' transforms (metadata, nothing is read).

    A weights file or null uses the architecture's default weights' values: the resolution and
    normalisation the architecture is trained at. The input size is the weights' crop size; the
    whole image is resized to it (no crop: the whole photo is evidence).
    """
    resolved = resolve_weights(weights, backbone)
    enum = resolved if isinstance(resolved, WeightsEnum) else get_model_weights(backbone).DEFAULT
    transforms = enum.transforms()
    return Preprocessing(
        image_size=int(transforms.crop_size[0]),
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        interpolation=transforms.interpolation.value,
    )


def _classifier(model: nn.Module, backbone: str) -> tuple[str, nn.Linear]:
    """The model's last Linear layer (resnet `fc`, efficientnet `classifier.1`, ...) by name."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"model.backbone={backbone} ends in no Linear classifier layer, so crackdet cannot "
            "take its features; choose another torchvision model."
        )
    return linears[-1]


def _check_fits(
    model: nn.Module, state: dict[str, torch.Tensor], skipped: str, source: str, backbone: str
) -> dict[str, torch.Tensor]:
    """The part of `state` this model loads; an error naming keys or shapes that do not fit."""
    # The classifier is replaced anyway; a checkpoint with any classifier (or none) is acceptable.
    state = {k: v for k, v in state.items() if not k.startswith(skipped)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skipped)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"model.weights={source} does not fit model.backbone={backbone}: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})."
        )
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise WeightsError(
            f"model.weights={source} does not fit model.backbone={backbone}: shape mismatch for {wrong[:5]} "
            f"(e.g. {wrong[0]}: file {tuple(state[wrong[0]].shape)}, "
            f"model {tuple(own[wrong[0]].shape)})."
        )
    return state


def build_backbone(weights: str | None, backbone: str = DEFAULT_BACKBONE) -> nn.Module:
    """The torchvision model `backbone` without its last Linear layer, giving features per image.

    The returned module's `feature_dim` is the features' width (512 for resnet18). `weights`: a
    torchvision enum name such as "IMAGENET1K_V1", a path to a state-dict file, or None for
    random initialisation. Never falls back to random weights when loading fails.
    """
    resolved = resolve_weights(weights, backbone)
    model = get_model(backbone, weights=None)
    name, classifier = _classifier(model, backbone)
    if resolved is not None:
        if isinstance(resolved, Path):
            state, source = _file_weights(resolved), str(resolved)
        else:
            state, source = _download_enum_weights(resolved), resolved.name
        model.load_state_dict(_check_fits(model, state, f"{name}.", source, backbone), strict=False)
    model.set_submodule(name, nn.Identity())
    model.feature_dim = classifier.in_features
    return model


def freeze(module: nn.Module) -> None:
    """Stop gradients for every parameter of `module`."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
