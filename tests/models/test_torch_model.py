"""The plain nn.Module: built and used without Lightning or a Trainer."""

import torch
from torch import nn

from crackdet.models.torch_model import CrackNet


def test_cracknet_freezes_the_backbone_and_keeps_batchnorm_in_eval_mode():
    net = CrackNet(weights=None).train()
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    assert net.head.training
    assert not any(m.training for m in net.backbone.modules())


def test_cracknet_logits_from_images_equal_logits_from_its_features():
    net = CrackNet(weights=None).eval()
    images = torch.rand(3, 3, 64, 64)
    logits = net(images)
    assert logits.shape == (3, 2)
    assert torch.allclose(net(net.features(images)), logits, atol=1e-6)


def test_cracknet_bn_mode_train_lets_batchnorm_statistics_drift():
    net = CrackNet(weights=None, bn_mode="train").train()
    norm = next(m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    before = norm.running_mean.clone()
    net(torch.rand(4, 3, 64, 64))
    assert not torch.equal(norm.running_mean, before)
