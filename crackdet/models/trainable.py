"""Which backbone parameters train (`model.trainable`): none, the last stage, or all.

The last stage is found from the architecture itself, not from a table of names: a dummy image
goes through the backbone and the stage starts at the last layer that reduces the feature map's
resolution (ResNet `layer4`, EfficientNet `features.6`, MobileNetV3 `features.13`, ConvNeXt
`features.6`), descending into the block group that holds several such layers. Everything from
there on trains; everything before it stays frozen.
"""

from __future__ import annotations

import torch
from torch import nn

from crackdet.errors import ConfigError
from crackdet.models.options import TRAINABLE


def check_trainable(mode: str) -> str:
    """Return `mode` when it is a known `model.trainable` value, else raise a ConfigError."""
    if mode not in TRAINABLE:
        raise ConfigError(f"model.trainable={mode} must be one of {list(TRAINABLE)}.")
    return mode


def _trace(backbone: nn.Module, image_size: int) -> dict[str, tuple[int, bool, bool]]:
    """Per module name: the order of its first call, whether it shrank the feature map, and
    whether its output is a feature map (4-D, larger than 1x1)."""
    calls: dict[str, tuple[int, bool, bool]] = {}

    def spatial(tensor: object) -> int | None:
        return tensor.shape[-2] * tensor.shape[-1] if isinstance(tensor, torch.Tensor) else None

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            before, after = spatial(inputs[0] if inputs else None), spatial(output)
            # A 1x1 output is global pooling, not a stage.
            feature_map = bool(after and after > 1 and output.ndim == 4)
            shrinks = bool(feature_map and before and after < before)
            calls.setdefault(name, (len(calls), shrinks, feature_map))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in backbone.named_modules() if n]
    mode = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, 3, image_size, image_size))
    finally:
        backbone.train(mode)
        for handle in handles:
            handle.remove()
    return calls


def last_stage_modules(backbone: nn.Module, image_size: int = 224) -> list[str]:
    """Names of the backbone's modules from the start of its last stage to its end.

    `image_size`: the input size the architecture is built for (ViTs accept no other).
    """
    calls = _trace(backbone, image_size)

    def children(parent: str) -> list[str]:
        module = backbone.get_submodule(parent) if parent else backbone
        names = [f"{parent}.{n}" if parent else n for n, _ in module.named_children()]
        return sorted((n for n in names if n in calls), key=lambda n: calls[n][0])

    def stage(parent: str) -> list[str] | None:
        kids = children(parent)
        shrinking = [i for i, name in enumerate(kids) if calls[name][1]]
        if not shrinking:
            return None
        start = kids[shrinking[-1]]
        # A block group that reduces resolution more than once holds several stages.
        inner = stage(start) if sum(calls[k][1] for k in children(start)) > 1 else None
        if inner is None and len(shrinking) < 2:
            return None  # one reduction only (a ViT's patch embedding): no stages to tell apart
        return (inner or [start]) + kids[shrinking[-1] + 1 :]

    return stage("") or []


def set_trainable(
    backbone: nn.Module, mode: str, name: str = "the backbone", image_size: int = 224
) -> list[str]:
    """Give `requires_grad` to the parameters `mode` trains; returns the modules that train."""
    check_trainable(mode)
    backbone.requires_grad_(mode == "all")
    if mode != "last_stage":
        return [""] if mode == "all" else []
    modules = last_stage_modules(backbone, image_size)
    stage = [p for m in modules for p in backbone.get_submodule(m).parameters()]
    total = sum(1 for _ in backbone.parameters())
    if not stage or len({id(p) for p in stage}) == total:
        raise ConfigError(
            f"model.trainable=last_stage: {name} has no last stage that leaves earlier layers "
            "frozen (its feature map's resolution is not reduced stage by stage); use "
            "model.trainable=all or head."
        )
    for module in modules:
        backbone.get_submodule(module).requires_grad_(True)
    return modules


def feature_map_layer(backbone: nn.Module, image_size: int = 224) -> nn.Module:
    """The last block whose output is the backbone's final feature map (Grad-CAM's target)."""
    calls = _trace(backbone, image_size)
    stage = [m for m in last_stage_modules(backbone, image_size) if calls[m][2]]
    if not stage:
        raise ConfigError(
            "Grad-CAM needs a backbone whose last stage outputs a spatial feature map; this "
            "architecture has none (a ViT or Swin keeps tokens)."
        )
    module = backbone.get_submodule(stage[-1])
    blocks = list(module.children())
    # Inside a stage the last block, as Grad-CAM is usually applied (ResNet layer4[-1]).
    return blocks[-1] if isinstance(module, nn.Sequential) and blocks else module
