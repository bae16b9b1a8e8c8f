"""Where the ResNet18 backbone is built, its weights resolved, and it is frozen."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from crackdet.errors import WeightsError

FEATURE_DIM = 512


def torchvision_cache_file(weights: ResNet18_Weights) -> Path:
    """Where torchvision's loader looks for (and downloads) a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _enum_weights(name: str) -> ResNet18_Weights:
    try:
        return ResNet18_Weights[name]
    except KeyError:
        raise WeightsError(
            f"model.weights={name} is neither a torchvision ResNet18 weights name "
            f"({', '.join(ResNet18_Weights.__members__)}), nor an existing file, nor null."
        ) from None


def _download_enum_weights(weights: ResNet18_Weights) -> dict[str, torch.Tensor]:
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


def resolve_weights(weights: str | None) -> Path | ResNet18_Weights | None:
    """`model.weights` as an existing file or a torchvision weights name; nothing is read yet."""
    if weights is None:
        return None
    path = Path(str(weights)).expanduser()
    if path.is_file():
        return path
    if "/" in str(weights) or str(weights).endswith((".pt", ".pth", ".bin")):
        raise WeightsError(
            f"model.weights={weights}: no such file. Give an existing state-dict file, a "
            "torchvision weights name (IMAGENET1K_V1) or null."
        )
    return _enum_weights(str(weights))


def build_backbone(weights: str | None) -> nn.Module:
    """ResNet18 with its classifier removed, giving 512 features per image.

    `weights`: a torchvision enum name such as "IMAGENET1K_V1", a path to a state-dict file, or
    None for random initialisation. Never falls back to random weights when loading fails.
    """
    model = resnet18(weights=None)
    resolved = resolve_weights(weights)
    if resolved is not None:
        if isinstance(resolved, Path):
            state = _file_weights(resolved)
            source = str(resolved)
        else:
            state = _download_enum_weights(resolved)
            source = resolved.name
        # The classifier is replaced anyway; a checkpoint with any fc (or none) is acceptable.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        expected = {k for k in model.state_dict() if not k.startswith("fc.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise WeightsError(
                f"model.weights={source} does not fit ResNet18: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected keys "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})."
            )
        own = model.state_dict()
        wrong = [k for k in expected if own[k].shape != state[k].shape]
        if wrong:
            raise WeightsError(
                f"model.weights={source} does not fit ResNet18: shape mismatch for {wrong[:5]} "
                f"(e.g. {wrong[0]}: file {tuple(state[wrong[0]].shape)}, "
                f"model {tuple(own[wrong[0]].shape)})."
            )
        model.load_state_dict(state, strict=False)
    model.fc = nn.Identity()
    return model


def freeze(module: nn.Module) -> None:
    """Stop gradients for every parameter of `module`."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
