"""The classifier as a plain `torch.nn.Module`: backbone features followed by the fc head.

Training (the LightningModule), export, prediction and Grad-CAM all use this one module; it knows
nothing of Lightning, so it can be built and tested without a Trainer.
"""

from __future__ import annotations

import torch
from torch import nn

from crackdet.errors import ConfigError
from crackdet.models.backbone import FEATURE_DIM, build_backbone, freeze

BN_MODES = ("frozen", "train")


class CrackNet(nn.Module):
    """ResNet18 features (frozen by default) followed by a Linear(512, num_classes) head."""

    def __init__(
        self,
        weights: str | None = None,
        bn_mode: str = "frozen",
        freeze_backbone: bool = True,
        num_classes: int = 2,
        dropout: float = 0.0,
        channels_last: bool = True,
    ):
        super().__init__()
        if bn_mode not in BN_MODES:
            raise ConfigError(f"model.bn_mode={bn_mode} must be one of {list(BN_MODES)}.")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout={dropout} must lie in [0, 1).")
        self.bn_mode = bn_mode
        self.freeze_backbone = bool(freeze_backbone)
        self.channels_last = bool(channels_last)
        self.backbone = build_backbone(weights)
        if self.freeze_backbone:
            freeze(self.backbone)
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        head_layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        self.head = nn.Sequential(*head_layers, nn.Linear(FEATURE_DIM, num_classes))
        self.train(self.training)

    @property
    def backbone_frozen_in_eval(self) -> bool:
        """True when the backbone's outputs cannot change during training."""
        return self.freeze_backbone and self.bn_mode == "frozen"

    def train(self, mode: bool = True) -> CrackNet:
        """Switch modes, but keep a frozen backbone's BatchNorm statistics fixed."""
        super().train(mode)
        if self.bn_mode == "frozen":
            # A trained backbone still keeps its BatchNorm statistics (and uses them) as loaded.
            frozen = (
                [self.backbone]
                if self.freeze_backbone
                else [
                    m
                    for m in self.backbone.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)
                ]
            )
            for module in frozen:
                module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of a batch; a 2-D input is taken as precomputed features."""
        if x.ndim == 2:
            return x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.freeze_backbone:
            # No autograd graph through a frozen backbone: faster and far less memory.
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised images (differentiable end to end, for Grad-CAM)."""
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x) if x.ndim == 4 else x)
