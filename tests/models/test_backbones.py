"""Any torchvision backbone: its preprocessing, what `model.trainable` trains, fine-tuning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision.models import get_model, get_model_weights

from crackdet.data.images import load_rgb
from crackdet.deploy.export import export
from crackdet.deploy.inference import find_images, load_checkpoint
from crackdet.deploy.predict import predict
from crackdet.errors import ConfigError, WeightsError
from crackdet.models import backbone as backbone_module
from crackdet.models.backbone import build_backbone, preprocessing, torchvision_cache_file
from crackdet.models.lightning_model import CrackClassifier
from crackdet.models.torch_model import CrackNet
from crackdet.models.trainable import last_stage_modules
from crackdet.training.feature_cache import usage_problem
from crackdet.training.train import train
from tests.conftest import compose_cfg

#: The backbones the README promises, with the modules model.trainable=last_stage trains.
LAST_STAGES = {
    "resnet18": ["layer4", "avgpool", "fc"],
    "resnet50": ["layer4", "avgpool", "fc"],
    "efficientnet_b0": ["features.6", "features.7", "features.8", "avgpool", "classifier"],
    "mobilenet_v3_large": [
        "features.13",
        "features.14",
        "features.15",
        "features.16",
        "avgpool",
        "classifier",
    ],
    "convnext_tiny": ["features.6", "features.7", "avgpool", "classifier"],
}
FEATURE_WIDTHS = {
    "resnet18": 512,
    "resnet50": 2048,
    "efficientnet_b0": 1280,
    "mobilenet_v3_large": 1280,
    "convnext_tiny": 768,
}


def in_stage(name: str, stage: list[str]) -> bool:
    return any(name == m or name.startswith(f"{m}.") for m in stage)


def backbone_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    prefix = "net.backbone."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(LAST_STAGES))
def test_backbone_gives_its_own_feature_width_and_last_stage(name: str) -> None:
    backbone = build_backbone(None, name)
    assert backbone.feature_dim == FEATURE_WIDTHS[name]
    assert backbone.eval()(torch.rand(2, 3, 48, 48)).shape == (2, FEATURE_WIDTHS[name])
    assert last_stage_modules(backbone) == LAST_STAGES[name]


@pytest.mark.parametrize(
    ("overrides", "weights_name"),
    [
        (["model.backbone=efficientnet_b3", "model.weights=null"], "DEFAULT"),
        (["model.backbone=resnet50", "model.weights=IMAGENET1K_V2"], "IMAGENET1K_V2"),
        (["model.backbone=convnext_tiny", "model.weights=IMAGENET1K_V1"], "IMAGENET1K_V1"),
    ],
)
def test_data_preprocessing_comes_from_the_chosen_weights(tmp_path, overrides, weights_name):
    cfg = compose_cfg(tmp_path / "run", overrides)
    meta = get_model_weights(cfg.model.backbone)[weights_name].transforms()
    datamodule = instantiate(cfg.data)
    assert datamodule.image_size == meta.crop_size[0]
    assert datamodule.mean == list(meta.mean) and datamodule.std == list(meta.std)
    # efficientnet_b3 is trained at 300 px, not the 224 of the others.
    assert (datamodule.image_size == 300) == (cfg.model.backbone == "efficientnet_b3")
    assert compose_cfg(tmp_path / "r2", [*overrides, "data.image_size=64"]).data.image_size == 64


def test_unknown_backbone_names_the_setting_and_close_names() -> None:
    with pytest.raises(ConfigError, match=r"model.backbone=resnet5 .*Did you mean.*resnet50"):
        preprocessing("resnet5")


def test_weights_name_and_file_are_checked_against_the_chosen_backbone(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"efficientnet_b0 weights name \(IMAGENET1K_V1"):
        build_backbone("IMAGENET1K_V2", "efficientnet_b0")
    path = tmp_path / "resnet18.pth"
    torch.save(get_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit model.backbone=resnet50: missing keys"):
        build_backbone(str(path), "resnet50")


def test_offline_weights_error_names_the_backbones_own_file(monkeypatch) -> None:
    enum = get_model_weights("mobilenet_v3_large")

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(enum, "get_state_dict", offline)
    with pytest.raises(WeightsError) as info:
        build_backbone("IMAGENET1K_V2", "mobilenet_v3_large")
    target = torchvision_cache_file(enum.IMAGENET1K_V2)
    assert str(target) in str(info.value) and "model.weights=null" in str(info.value)
    assert target.name != torchvision_cache_file(get_model_weights("resnet18").DEFAULT).name


def test_weights_in_the_cache_load_for_any_backbone(monkeypatch, tmp_path) -> None:
    enum = get_model_weights("efficientnet_b0")
    torch.manual_seed(5)
    expected = get_model("efficientnet_b0").state_dict()
    monkeypatch.setattr(enum, "get_state_dict", lambda self, **kwargs: expected)
    monkeypatch.setattr(backbone_module, "torchvision_cache_file", lambda w: tmp_path / "x.pth")
    loaded = build_backbone("IMAGENET1K_V1", "efficientnet_b0")
    assert torch.equal(loaded.features[0][0].weight, expected["features.0.0.weight"])


# bn_mode=train with trainable=head is the reference notebook's drift, tested in test_model.py.
@pytest.mark.parametrize(("trainable", "bn_mode"), [("head", "frozen"), ("last_stage", "train")])
def test_an_optimizer_step_changes_only_what_trainable_says(trainable: str, bn_mode: str) -> None:
    torch.manual_seed(0)
    model = CrackClassifier(
        weights=None, backbone="efficientnet_b0", trainable=trainable, bn_mode=bn_mode
    )
    before = {k: v.clone() for k, v in model.net.backbone.state_dict().items()}
    optimizer = model.configure_optimizers()
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == ([1e-3] if trainable == "head" else [1e-3, 1e-3])  # backbone_lr=None: same lr
    model.train()
    for _ in range(2):
        loss = model(torch.rand(4, 3, 48, 48)).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.net.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stage = LAST_STAGES["efficientnet_b0"]
    if trainable == "head":
        assert changed == set()
    else:
        assert changed and all(in_stage(k, stage) for k in changed)
        # Parameters and BatchNorm statistics of the last stage did train.
        assert any(k.endswith("running_mean") for k in changed)
        assert any(k.endswith(".weight") and "block" in k for k in changed)


def test_backbone_lr_is_its_own_parameter_group() -> None:
    model = CrackClassifier(weights=None, trainable="last_stage", backbone_lr=1e-5)
    head, backbone = model.configure_optimizers().param_groups
    assert (head["name"], head["lr"], backbone["name"], backbone["lr"]) == (
        "head",
        1e-3,
        "backbone",
        1e-5,
    )
    assert {id(p) for p in backbone["params"]} == {
        id(p) for p in model.net.backbone.layer4.parameters()
    }


def test_trained_backbone_turns_the_feature_cache_off(tiny_cfg) -> None:
    for mode in ("last_stage", "all"):
        cfg = tiny_cfg(f"model.trainable={mode}")
        problem = usage_problem(instantiate(cfg.data), instantiate(cfg.model))
        assert problem.startswith(f"model.trainable={mode}: backbone weights train")


def _predict(ckpt: Path, images: Path, run_dir: Path) -> dict[str, float]:
    predict(compose_cfg(run_dir, [f"ckpt_path={ckpt}", f"input={images}"], config_name="predict"))
    with open(run_dir / "predictions.csv", newline="") as handle:
        return {
            str(Path(r["path"]).resolve()): float(r["prob_crack"]) for r in csv.DictReader(handle)
        }


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["resnet50", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny"]
)
def test_backbone_fine_tunes_its_last_stage_exports_and_predicts(
    name: str, tiny_cfg, tmp_path: Path, image_folder
) -> None:
    torch.manual_seed(7)
    weights = tmp_path / f"{name}.pth"
    torch.save(get_model(name).state_dict(), weights)
    cfg = tiny_cfg(
        f"model.backbone={name}",
        f"model.weights={weights}",
        "model.trainable=last_stage",
        "model.bn_mode=train",
        "data.image_size=32",
        "test=false",
    )
    results = train(cfg)
    ckpt = Path(results["best_checkpoint"])
    initial = torch.load(weights, weights_only=True)
    after = backbone_tensors(torch.load(ckpt, weights_only=True)["state_dict"])
    stage = LAST_STAGES[name]
    moved = {k for k in after if not torch.equal(after[k], initial[k])}
    # Tensor by tensor: nothing before the last stage changed, BatchNorm statistics included.
    assert moved and all(in_stage(k, stage) for k in moved), sorted(moved - set(stage))[:5]
    assert any(k.endswith(".weight") for k in moved)
    loaded = load_checkpoint(ckpt)
    net = loaded.model.net
    stage_size = sum(p.numel() for n, p in net.backbone.named_parameters() if in_stage(n, stage))
    head_size = sum(p.numel() for p in net.head.parameters())
    assert results["cost"]["trainable_parameters"] == stage_size + head_size
    assert results["cost"]["parameters"] == sum(p.numel() for p in net.parameters())
    assert results["cost"]["cached_features"] is False

    export_dir = tmp_path / "export"
    meta = export(compose_cfg(export_dir, [f"ckpt_path={ckpt}"], config_name="export"))
    assert meta["verification"]["max_abs_diff_vs_pytorch_fp32"] < 1e-4

    photos = image_folder(n_per_class=2, size=40)
    got = _predict(ckpt, photos, tmp_path / "predict")
    paths = find_images(str(photos))
    with torch.inference_mode():
        batch = torch.stack([loaded.transform()(load_rgb(p)) for p in paths])
        expected = loaded.model(batch).softmax(dim=-1)[:, 1]
    assert sorted(got) == sorted(str(p.resolve()) for p in paths)
    for path, prob in zip(paths, expected.tolist(), strict=True):
        assert got[str(path.resolve())] == pytest.approx(prob, abs=1e-5)


@pytest.mark.slow
def test_backbone_finetuning_unfreezes_the_backbone_at_its_epoch(tiny_cfg, tmp_path) -> None:
    torch.manual_seed(3)
    weights = tmp_path / "resnet18.pth"
    torch.save(get_model("resnet18").state_dict(), weights)
    base = [f"model.weights={weights}", "callbacks=backbone_finetuning", "test=false"]
    refused = tiny_cfg(*base, run_dir=tmp_path / "refused")
    with pytest.raises(ConfigError, match="set model.trainable=all"):
        train(refused)
    cfg = tiny_cfg(*base, "model.trainable=all", "trainer.max_epochs=2")
    results = train(cfg)
    last = Path(results["output_dir"]) / "checkpoints" / "last.ckpt"  # best may be epoch 0's
    after = backbone_tensors(torch.load(last, weights_only=True)["state_dict"])
    initial = torch.load(weights, weights_only=True)
    convs = [k for k in after if k.endswith("conv1.weight")]
    assert convs and all(not torch.equal(after[k], initial[k]) for k in convs)
    # bn_mode=frozen: BatchNorm statistics stay as loaded although the backbone trained.
    running = [k for k in after if k.endswith("running_mean")]
    assert running and all(torch.equal(after[k], initial[k]) for k in running)
    # After unfreezing everything is in the optimizer (Lightning leaves BatchNorm weights
    # trainable throughout, in the backbone's group).
    net = CrackNet(weights=None)
    assert results["cost"]["trainable_parameters"] == sum(p.numel() for p in net.parameters())
    assert results["cost"]["cached_features"] is False
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["cost"]


def test_grad_cam_uses_the_last_block_of_any_tested_backbone() -> None:
    from crackdet.evaluation.analysis import gradcam_maps

    torch.manual_seed(0)
    model = CrackClassifier(weights=None, backbone="mobilenet_v3_large").eval()
    maps = gradcam_maps(model, torch.rand(2, 3, 64, 64))
    assert maps.shape == (2, 64, 64) and maps.max() <= 1 and maps.min() >= 0
    assert maps.std() > 0  # a map, not a constant
