"""Backbone runtimes: parity with eager PyTorch, the `auto` choice, bf16 only where native."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from crackdet.data.transforms import batch_normalizer, eval_transform, resize_transform
from crackdet.errors import ConfigError
from crackdet.models import runtime
from crackdet.models.backbone import build_backbone
from crackdet.models.runtime import build_feature_extractor, choose_runtime, installed
from crackdet.training.feature_cache import settings_key

#: fp32 runtimes agree with eager within this fraction of the largest feature (about 1e-6 seen).
FP32_TOLERANCE = 1e-5
#: bf16 features differ from fp32 by about 5e-3 (OpenVINO) to 8e-3 (PyTorch) of the largest one.
BF16_TOLERANCE = 3e-2


@pytest.fixture(scope="module")
def batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random-init backbone, three 48 px images and their eager fp32 features."""
    torch.manual_seed(0)
    backbone, images = build_backbone(None).eval(), torch.randn(3, 3, 48, 48)
    return backbone, images, build_feature_extractor(backbone, "eager", images)(images)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache_dir whose runtimes/ keeps the module's one ONNX export of the `batch` backbone.

    Exporting takes seconds; test_fp32_runtimes_match_eager checks the export itself in a fresh
    folder, the other tests of the module share this one.
    """
    return tmp_path_factory.mktemp("exports")


def _relative_error(features: torch.Tensor, reference: torch.Tensor) -> float:
    return float((features - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_fp32_runtimes_match_eager(batch, name: str, tmp_path: Path):
    if not installed(name):
        pytest.skip(f"{name} is not installed")
    backbone, images, eager = batch
    extract = build_feature_extractor(backbone, name, images, cache_dir=tmp_path)
    assert _relative_error(extract(images), eager) < FP32_TOLERANCE
    # The batch dimension is dynamic: a short last batch gives the same rows.
    assert _relative_error(extract(images[:1]), eager[:1]) < FP32_TOLERANCE
    # The ONNX export is kept on disk and reused by the next run with the same weights.
    exports = list((tmp_path / "runtimes").glob("*.onnx"))
    assert len(exports) == 1
    build_feature_extractor(backbone, name, images, cache_dir=tmp_path)
    assert list((tmp_path / "runtimes").glob("*.onnx")) == exports


@pytest.mark.parametrize("name", ["eager", "onnxruntime", "openvino"])
def test_runtimes_normalise_uint8_images_as_eval_transform_does(batch, name: str, exports: Path):
    """Bulk extraction hands over bytes; each runtime normalises them (OpenVINO in its graph)."""
    if not installed(name):
        pytest.skip(f"{name} is not installed")
    backbone = batch[0]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.manual_seed(1)
    photos = [
        Image.fromarray(torch.randint(0, 256, (60, 52, 3), dtype=torch.uint8).numpy())
        for _ in range(3)
    ]
    floats = torch.stack([eval_transform(48, mean, std)(photo) for photo in photos])
    uint8 = torch.stack([resize_transform(48)(photo) for photo in photos])
    assert uint8.dtype == torch.uint8
    assert torch.equal(batch_normalizer(mean, std)(uint8), floats)  # bit for bit
    reference = build_feature_extractor(backbone, "eager", floats)(floats)
    extract = build_feature_extractor(
        backbone, name, floats, cache_dir=exports, normalization=(mean, std)
    )
    assert _relative_error(extract(uint8), reference) < FP32_TOLERANCE
    # A wrong normalisation would not pass unnoticed: the features move far beyond the tolerance.
    assert _relative_error(extract(uint8), extract(torch.zeros_like(uint8))) > 100 * FP32_TOLERANCE


@pytest.mark.parametrize("name", ["eager", "openvino"])
def test_bf16_features_are_close_to_fp32_where_supported(batch, name: str, exports: Path):
    if not installed(name) or runtime.bf16_problem(name, torch.device("cpu")):
        pytest.skip(f"{name} has no native bf16 on this CPU")
    backbone, images, eager = batch
    extract = build_feature_extractor(backbone, name, images, precision="bf16", cache_dir=exports)
    features = extract(images)
    error = _relative_error(features, eager)
    assert 0 < error < BF16_TOLERANCE  # reduced precision: close, but not identical


def _hide(monkeypatch, *packages: str) -> None:
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError


def test_auto_takes_the_fastest_installed_runtime_and_says_why(monkeypatch, batch, caplog):
    if installed("openvino"):
        assert choose_runtime("auto").runtime == "openvino"
    _hide(monkeypatch, "openvino")
    if installed("onnxruntime"):
        choice = choose_runtime("auto")
        assert choice.runtime == "onnxruntime"
        assert "openvino is not installed" in choice.reason
    _hide(monkeypatch, "onnxruntime")
    backbone, images, eager = batch
    with caplog.at_level(logging.INFO, logger="crackdet"):
        extract = build_feature_extractor(backbone, "auto", images)
    torch.testing.assert_close(extract(images), eager)
    assert "Backbone runtime: eager fp32 (auto" in caplog.text
    assert "openvino is not installed" in caplog.text
    assert "onnxruntime is not installed" in caplog.text
    with pytest.raises(ConfigError, match="model.backbone_runtime=openvino needs the `openvino`"):
        choose_runtime("openvino")


def test_bf16_is_refused_by_name_without_native_support(monkeypatch):
    monkeypatch.setattr(runtime, "torch_cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "openvino_cpu_has_bf16", lambda: False)
    refused = "backbone_precision=bf16 with model.backbone_runtime=eager"
    with pytest.raises(ConfigError, match=refused) as info:
        choose_runtime("eager", "bf16")
    message = str(info.value)
    assert "no native bfloat16" in message and "model.backbone_precision=fp32" in message
    with pytest.raises(ConfigError, match="runtime=auto"):
        choose_runtime("auto", "bf16")
    with pytest.raises(ConfigError, match="onnxruntime runs this backbone in float32 only"):
        choose_runtime("onnxruntime", "bf16")
    with pytest.raises(ConfigError, match="model.backbone_precision=fp16 must be one of"):
        choose_runtime("eager", "fp16")
    # With native support in PyTorch only, auto falls back to eager, and the fix names it.
    monkeypatch.setattr(runtime, "torch_cpu_has_native_bf16", lambda: True)
    assert choose_runtime("auto", "bf16").runtime == "eager"
    with pytest.raises(ConfigError, match="model.backbone_runtime=eager \\(native bfloat16"):
        choose_runtime("onnxruntime", "bf16")


def test_training_refuses_bf16_without_native_support_before_any_work(tiny_cfg, monkeypatch):
    from crackdet.training.train import train

    monkeypatch.setattr(runtime, "torch_cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "openvino_cpu_has_bf16", lambda: False)
    cfg = tiny_cfg("model.backbone_precision=bf16", "logger=csv")
    with pytest.raises(ConfigError, match="model.backbone_precision=bf16"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_feature_cache_is_shared_by_fp32_runtimes_and_separate_for_bf16():
    datamodule = SimpleNamespace(
        image_size=48, mean=[0.5] * 3, std=[0.2] * 3, interpolation="bilinear"
    )
    fp32 = settings_key("weights", datamodule, "eager", "32-true")
    # The runtime is not part of a float32 key; fp32 is the key every earlier cache folder has.
    assert settings_key("weights", datamodule, "openvino", "32-true", "fp32") == fp32
    assert settings_key("weights", datamodule, "auto", "32-true", "bf16") != fp32
