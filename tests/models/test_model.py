"""The LightningModule: what is frozen stays frozen, weights load or fail clearly."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from crackdet.errors import ConfigError, WeightsError
from crackdet.models import backbone as backbone_module
from crackdet.models.backbone import build_backbone, torchvision_cache_file
from crackdet.models.lightning_model import CrackClassifier
from crackdet.training.train import train


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    """A ResNet18 state dict written by the test, standing in for downloaded weights."""
    torch.manual_seed(123)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    return path


def backbone_state(state_dict: dict) -> dict[str, torch.Tensor]:
    return {
        k[len("net.backbone.") :]: v for k, v in state_dict.items() if k.startswith("net.backbone.")
    }


def test_backbone_is_frozen_and_only_the_head_trains() -> None:
    model = CrackClassifier(weights=None)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert [p.shape for p in model.head.parameters() if p.requires_grad] == [(2, 512), (2,)]
    optimizer = model.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.head.parameters()}


def test_backbone_stays_in_eval_mode_when_training() -> None:
    model = CrackClassifier(weights=None).train()
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.modules())
    drifting = CrackClassifier(weights=None, bn_mode="train").train()
    assert all(m.training for m in drifting.backbone.modules())


@pytest.mark.parametrize("bn_mode", ["frozen", "train"])
def test_training_changes_only_what_it_should(tiny_cfg, weights_file: Path, bn_mode: str) -> None:
    cfg = tiny_cfg(
        f"model.weights={weights_file}",
        f"model.bn_mode={bn_mode}",
        "test=false",
        # bn_mode=frozen trains on cached features: eager ones, as the default runtime would export
        # this test's own weights to ONNX first (seconds), and what trains does not depend on it.
        "model.backbone_runtime=eager",
    )
    results = train(cfg)
    trained = torch.load(results["best_checkpoint"], weights_only=True)["state_dict"]
    initial = torch.load(weights_file, weights_only=True)
    after = backbone_state(trained)
    running = [k for k in after if k.endswith(("running_mean", "running_var"))]
    learned = [k for k in after if k.endswith(("weight", "bias"))]
    assert running and learned
    # Convolution and BatchNorm affine parameters never change: requires_grad is False.
    assert all(torch.equal(after[k], initial[k]) for k in learned)
    drifted = [k for k in running if not torch.equal(after[k], initial[k])]
    if bn_mode == "frozen":
        assert drifted == [], "BatchNorm statistics drifted although bn_mode=frozen"
    else:
        assert len(drifted) == len(running), "bn_mode=train should reproduce the notebook's drift"
    fresh_head = CrackClassifier(weights=None).head.state_dict()
    assert trained["net.head.0.weight"].shape == fresh_head["0.weight"].shape
    # The head did train: its loss went down from the first step to the end of the epoch.
    assert results["fit"]["train/loss"] < 5.0


def test_local_weights_file_is_loaded(weights_file: Path) -> None:
    model = build_backbone(str(weights_file))
    expected = torch.load(weights_file, weights_only=True)
    assert torch.equal(model.conv1.weight, expected["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, expected["layer4.1.bn2.running_var"])


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"model.weights=.*no such file"):
        build_backbone(str(tmp_path / "missing.pth"))


def test_weights_file_that_does_not_fit_resnet18(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="does not fit model.backbone=resnet18: missing keys"):
        build_backbone(str(path))
    state = resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, path)
    with pytest.raises(WeightsError, match="shape mismatch.*conv1.weight"):
        build_backbone(str(path))


def test_unknown_weights_name(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        build_backbone("IMAGENET_V9")


def test_offline_imagenet_weights_error_says_where_to_put_the_file(monkeypatch) -> None:
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsError) as info:
        build_backbone("IMAGENET1K_V1")
    message = str(info.value)
    assert str(torchvision_cache_file(ResNet18_Weights.IMAGENET1K_V1)) in message
    assert "model.weights=/path/to/resnet18-f37072fd.pth" in message
    assert "model.weights=null" in message


def test_weights_in_torchvision_cache_are_used_without_network(monkeypatch, tmp_path, weights_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    target = torchvision_cache_file(ResNet18_Weights.IMAGENET1K_V1)
    target.parent.mkdir(parents=True)
    target.write_bytes(weights_file.read_bytes())
    monkeypatch.setattr(backbone_module, "torchvision_cache_file", lambda w: target)
    # check_hash would reject a file that is not the real one; the loader is torchvision's.
    monkeypatch.setattr(
        ResNet18_Weights,
        "get_state_dict",
        lambda self, progress=True, check_hash=True: torch.load(target, weights_only=True),
    )
    model = build_backbone("IMAGENET1K_V1")
    assert torch.equal(
        model.conv1.weight, torch.load(weights_file, weights_only=True)["conv1.weight"]
    )


@pytest.mark.parametrize("kwargs", [{"bn_mode": "drift"}, {"dropout": 1.0}])
def test_bad_model_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="model."):
        CrackClassifier(weights=None, **kwargs)


def test_checkpoint_holds_plain_hyperparameters(tiny_cfg) -> None:
    results = train(tiny_cfg("test=false"))
    checkpoint = torch.load(results["best_checkpoint"], weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["optimizer"]["_target_"] == "torch.optim.Adam"
    assert type(hparams["optimizer"]) is dict
    model = CrackClassifier.load_from_checkpoint(results["best_checkpoint"], weights=None)
    assert torch.equal(model.head[-1].weight, checkpoint["state_dict"]["net.head.0.weight"])


def test_a_trained_backbone_keeps_batchnorm_frozen_under_bn_mode_frozen() -> None:
    model = CrackClassifier(weights=None, trainable="all").train()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert norms and not any(m.training for m in norms)
    assert all(m.training for m in convs)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_a_checkpoint_of_the_earlier_layout_loads_with_its_weights(tiny_cfg, tmp_path) -> None:
    """Checkpoints written before `net.` and `model.trainable` (freeze_backbone) still load."""
    results = train(tiny_cfg("test=false"))
    checkpoint = torch.load(results["best_checkpoint"], weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    del hparams["trainable"], hparams["backbone"], hparams["backbone_precision"]
    hparams["freeze_backbone"] = True
    checkpoint["state_dict"] = {
        k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()
    }
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model = CrackClassifier.load_from_checkpoint(old, weights=None)
    assert model.hparams.trainable == "head"
    assert torch.equal(model.head[-1].weight, checkpoint["state_dict"]["head.0.weight"])
