"""The classifier's settings (`model.*`) and the network they build, without Lightning.

`CrackClassifier`, the LightningModule, records `build_classifier`'s settings in every checkpoint
(`hyper_parameters`) and trains the network it builds. predict.py rebuilds that network from a
checkpoint's settings the same way (crackdet.models.checkpoint.load_network), without importing
Lightning, whose import takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crackdet.errors import ConfigError
from crackdet.models.backbone import DEFAULT_BACKBONE
from crackdet.models.runtime import check_precision, check_runtime
from crackdet.models.torch_model import CrackNet
from crackdet.models.trainable import check_trainable

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain dicts/lists, so checkpoints load with weights_only=True."""
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build_classifier(
    weights: str | None = None,
    bn_mode: str = "frozen",
    trainable: str = "head",
    num_classes: int = 2,
    dropout: float = 0.0,
    optimizer: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
    scheduler_monitor: str = "val/loss",
    channels_last: bool = True,
    backbone_runtime: str = "auto",
    backbone_precision: str = "fp32",
    backbone: str = DEFAULT_BACKBONE,
    backbone_lr: float | None = None,
    freeze_backbone: bool | None = None,
) -> tuple[dict[str, Any], CrackNet]:
    """The checked settings a checkpoint records and the network they build.

    Takes exactly CrackClassifier's arguments, which are the recorded settings' names.
    """
    if freeze_backbone is not None:
        # Checkpoints written before model.trainable recorded this flag instead.
        trainable = "head" if freeze_backbone else "all"
    check_runtime(backbone_runtime)
    check_precision(backbone_precision)
    check_trainable(trainable)
    if backbone_lr is not None and not backbone_lr > 0:
        raise ConfigError(f"model.backbone_lr={backbone_lr} must be above 0 (or null).")
    settings = {
        "backbone": str(backbone),
        "weights": None if weights is None else str(weights),
        "bn_mode": bn_mode,
        "trainable": trainable,
        "backbone_lr": None if backbone_lr is None else float(backbone_lr),
        "num_classes": int(num_classes),
        "dropout": float(dropout),
        "optimizer": _plain(optimizer) or dict(DEFAULT_OPTIMIZER),
        "scheduler": _plain(scheduler),
        "scheduler_monitor": scheduler_monitor,
        "channels_last": bool(channels_last),
        # How the feature cache, eval.py and predict.py run the frozen backbone;
        # `forward` and training steps always run eagerly.
        "backbone_runtime": backbone_runtime,
        "backbone_precision": backbone_precision,
    }
    net = CrackNet(
        weights=weights,
        bn_mode=bn_mode,
        trainable=trainable,
        backbone=backbone,
        num_classes=num_classes,
        dropout=dropout,
        channels_last=channels_last,
    )
    return settings, net


def upgrade_weight_names(checkpoint: dict[str, Any]) -> None:
    """Rename, in place, the weights of checkpoints written before they moved under `net.`."""
    state = checkpoint.get("state_dict", {})
    for key in [k for k in state if k.startswith(("backbone.", "head."))]:
        state[f"net.{key}"] = state.pop(key)
