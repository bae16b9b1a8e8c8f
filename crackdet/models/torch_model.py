"""The classifier as a plain `torch.nn.Module`: backbone features followed by the fc head.

Training (the LightningModule), export, prediction and Grad-CAM all use this one module; it knows
nothing of Lightning, so it can be built and tested without a Trainer.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from crackdet.errors import ConfigError
from crackdet.models.backbone import build_backbone, preprocessing
from crackdet.models.options import BN_MODES, DEFAULT_BACKBONE
from crackdet.models.trainable import set_trainable

log = logging.getLogger(__name__)

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class CrackNet(nn.Module):
    """Backbone features (frozen by default) followed by a Linear(feature width, classes) head."""

    def __init__(
        self,
        weights: str | None = None,
        bn_mode: str = "frozen",
        trainable: str = "head",
        num_classes: int = 2,
        dropout: float = 0.0,
        channels_last: bool = True,
        backbone: str = DEFAULT_BACKBONE,
    ):
        super().__init__()
        if bn_mode not in BN_MODES:
            raise ConfigError(f"model.bn_mode={bn_mode} must be one of {list(BN_MODES)}.")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout={dropout} must lie in [0, 1).")
        self.bn_mode = bn_mode
        self.channels_last = bool(channels_last)
        self.backbone = build_backbone(weights, backbone)
        #: The input size the backbone's weights were trained at (its shapes are traced at it).
        self.native_size = preprocessing(backbone, weights).image_size
        trained = set_trainable(
            self.backbone, trainable, f"model.backbone={backbone}", self.native_size
        )
        if trainable == "last_stage":
            log.info("model.trainable=last_stage trains backbone modules %s.", ", ".join(trained))
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        head_layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        self.head = nn.Sequential(*head_layers, nn.Linear(self.backbone.feature_dim, num_classes))
        self.train(self.training)

    @property
    def backbone_trains(self) -> bool:
        """True when some backbone parameter is trainable (model.trainable, or a callback)."""
        return any(p.requires_grad for p in self.backbone.parameters())

    @property
    def backbone_frozen_in_eval(self) -> bool:
        """True when the backbone's outputs cannot change during training."""
        return not self.backbone_trains and self.bn_mode == "frozen"

    def train(self, mode: bool = True) -> CrackNet:
        """Switch modes; frozen backbone parts (and all BatchNorm under bn_mode=frozen) stay in eval.

        With no backbone weight training, bn_mode=train keeps the reference notebook's drift of
        the whole backbone's BatchNorm statistics; otherwise frozen parts never change.
        """
        super().train(mode)
        if not mode or (self.bn_mode == "train" and not self.backbone_trains):
            return self
        for module in self.backbone.modules():
            # modules() runs parents first: a frozen block's children follow it into eval mode.
            parameters = list(module.parameters())
            frozen = bool(parameters) and not any(p.requires_grad for p in parameters)
            if frozen or (self.bn_mode == "frozen" and isinstance(module, BATCH_NORMS)):
                module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of a batch; a 2-D input is taken as precomputed features."""
        if x.ndim == 2:
            return x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.backbone_trains:
            # No autograd graph through a frozen backbone: faster and far less memory.
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised images (differentiable end to end, for Grad-CAM)."""
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x) if x.ndim == 4 else x)
