"""export.py: the classifier as ONNX / TorchScript gives PyTorch's answers outside PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import crackdet.deploy.export
from crackdet.data.images import load_rgb
from crackdet.data.synthetic import synthetic_image
from crackdet.data.transforms import eval_transform
from crackdet.deploy.export import export, load_pt2
from crackdet.errors import ConfigError
from crackdet.evaluation.threshold import stored_threshold
from crackdet.models.lightning_model import CrackClassifier
from tests.conftest import REAL_SAMPLE, compose_cfg, needs_real_sample


def _export(ckpt: Path, run_dir: Path, *overrides: str) -> dict:
    return export(compose_cfg(run_dir, [f"ckpt_path={ckpt}", *overrides], config_name="export"))


def _pytorch_probs(ckpt: Path, images: list[Image.Image]) -> np.ndarray:
    """The reference: the checkpoint's model on data set style (normalised) inputs."""
    model = CrackClassifier.load_from_checkpoint(ckpt, weights=None, map_location="cpu").eval()
    data = torch.load(ckpt, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    transform = eval_transform(data["image_size"], data["mean"], data["std"])
    with torch.inference_mode():
        return model(torch.stack([transform(i) for i in images])).softmax(dim=-1).numpy()


def _exported_inputs(sidecar: dict, images: list[Image.Image]) -> np.ndarray:
    """What the sidecar tells a field device to feed: resized RGB in [0, 1], NCHW."""
    size = sidecar["input"]["shape"][-1]
    to_unit_range = eval_transform(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return torch.stack([to_unit_range(i) for i in images]).numpy()


def _synthetic_images(n: int = 6) -> list[Image.Image]:
    return [synthetic_image(100 + i, 64 + 16 * i, crack=bool(i % 2)) for i in range(n)]


def _real_images(n_per_class: int = 8) -> list[Image.Image]:
    return [
        load_rgb(p)
        for c in ("Positive", "Negative")
        for p in sorted((REAL_SAMPLE / c).glob("*.jpg"))[:n_per_class]
    ]


@pytest.fixture(scope="module")
def best_ckpt(trained_run: Path) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def onnx_model(best_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One ONNX export of the tiny trained model, shared by the parity tests."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    _export(best_ckpt, run_dir, "format=onnx")
    return run_dir / "model.onnx", json.loads((run_dir / "model.json").read_text())


def _assert_onnx_parity(ckpt: Path, model: Path, sidecar: dict, images: list[Image.Image]):
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = _exported_inputs(sidecar, images)
    expected = _pytorch_probs(ckpt, images)
    got = session.run([sidecar["output"]["name"]], {sidecar["input"]["name"]: inputs})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # The batch dimension is dynamic: one image at a time gives the same answers.
    single = session.run(None, {sidecar["input"]["name"]: inputs[:1]})[0]
    np.testing.assert_allclose(single, expected[:1], atol=1e-4, rtol=0)


def test_onnx_matches_pytorch_on_synthetic_images(best_ckpt: Path, onnx_model):
    model, sidecar = onnx_model
    _assert_onnx_parity(best_ckpt, model, sidecar, _synthetic_images())
    assert sidecar["class_names"] == ["no crack", "crack"]
    assert sidecar["threshold"] == pytest.approx(stored_threshold(best_ckpt) or 0.5)
    assert sidecar["input"]["shape"] == ["batch", 3, 48, 48]
    assert sidecar["input"]["value_range"] == [0.0, 1.0]


@needs_real_sample
def test_onnx_matches_pytorch_on_real_sample_images(best_ckpt: Path, onnx_model):
    _assert_onnx_parity(best_ckpt, *onnx_model, _real_images())


def test_pt2_matches_pytorch_at_any_batch_size(best_ckpt: Path, tmp_path: Path):
    _export(best_ckpt, tmp_path / "run", "format=pt2")
    sidecar = json.loads((tmp_path / "run" / "model.json").read_text())
    assert sidecar["format"] == "pt2" and sidecar["file"] == "model.pt2"
    model = load_pt2(tmp_path / "run" / sidecar["file"])
    with torch.inference_mode():
        single = model(torch.from_numpy(_exported_inputs(sidecar, _synthetic_images(1))))
    assert single.shape == (1, 2)
    images = _synthetic_images(4)
    with torch.inference_mode():
        got = model(torch.from_numpy(_exported_inputs(sidecar, images))).numpy()
    np.testing.assert_allclose(got, _pytorch_probs(best_ckpt, images), atol=1e-4, rtol=0)


def test_export_never_overwrites(best_ckpt: Path, tmp_path: Path):
    existing = tmp_path / "deployed.onnx"
    existing.write_bytes(b"the model in the field")
    with pytest.raises(ConfigError, match="never overwrite"):
        _export(best_ckpt, tmp_path / "run", f"output={existing}")
    assert existing.read_bytes() == b"the model in the field"
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="other.json already exists"):
        _export(best_ckpt, tmp_path / "run", f"output={tmp_path / 'other.pt2'}", "format=pt2")
    assert not (tmp_path / "other.pt2").exists()


def test_unwritable_output_is_refused_before_any_work(best_ckpt: Path, tmp_path: Path, monkeypatch):
    in_the_way = tmp_path / "deploy"
    in_the_way.write_text("a file where the output folder should be")

    def work_started(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output was checked")

    monkeypatch.setattr(crackdet.deploy.export, "load_checkpoint", work_started)
    with pytest.raises(ConfigError) as refused:
        _export(best_ckpt, tmp_path / "run", f"output={in_the_way / 'model.onnx'}")
    message = str(refused.value)
    assert f"output={in_the_way}" in message and "not writable" in message
    assert "Fix: give output=<path>" in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["format=tflite"], "format=tflite"),
        (["format=pt2", "quantize=int8"], "needs format=onnx"),
        (["format=torchscript"], "use format=pt2"),
        (["quantize=int4"], "quantize=int4"),
    ],
)
def test_bad_export_settings_are_named(best_ckpt: Path, tmp_path: Path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _export(best_ckpt, tmp_path / "run", *overrides)


@pytest.mark.slow
def test_int8_model_is_smaller_and_agrees(
    best_ckpt: Path, onnx_model, tmp_path: Path, image_folder
):
    calibration = image_folder(n_per_class=8, size=48)
    _export(
        best_ckpt,
        tmp_path / "run",
        "quantize=int8",
        f"calibration={calibration}",
        "calibration_images=16",
    )
    int8 = tmp_path / "run" / "model.onnx"
    sidecar = json.loads((tmp_path / "run" / "model.json").read_text())
    assert sidecar["quantization"] == "int8" and sidecar["calibration"]["images"] == 16
    assert int8.stat().st_size < onnx_model[0].stat().st_size / 3
    inputs = _exported_inputs(sidecar, _synthetic_images())
    fp32 = ort.InferenceSession(str(onnx_model[0]), providers=["CPUExecutionProvider"])
    quantized = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        quantized.run(None, {"image": inputs})[0],
        fp32.run(None, {"image": inputs})[0],
        atol=0.05,
        rtol=0,
    )
