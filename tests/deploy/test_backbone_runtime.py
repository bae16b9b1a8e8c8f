"""predict.py and eval.py run the backbone on the configured runtime, with the same results."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from crackdet.deploy import inference
from crackdet.deploy.predict import predict
from crackdet.evaluation.evaluate import evaluate
from crackdet.models.runtime import installed
from tests.conftest import compose_cfg

pytestmark = pytest.mark.skipif(not installed("onnxruntime"), reason="onnxruntime not installed")


@pytest.fixture
def runtimes_used(monkeypatch) -> list[tuple[str, str]]:
    """(runtime, precision) of every backbone predict/eval build, in order."""
    used: list[tuple[str, str]] = []
    build = inference.build_feature_extractor

    def spy(backbone, runtime, example, device=None, precision="fp32", *args):
        used.append((runtime, precision))
        return build(backbone, runtime, example, device, precision, *args)

    monkeypatch.setattr(inference, "build_feature_extractor", spy)
    return used


def _probabilities(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "predictions.csv", newline="") as handle:
        return {row["path"]: float(row["prob_crack"]) for row in csv.DictReader(handle)}


def test_predict_runs_the_configured_runtime(
    trained_run, image_folder, tmp_path, runtimes_used, fresh_cache
):
    ckpt, photos = trained_run / "checkpoints" / "best.ckpt", image_folder(n_per_class=3, size=48)
    cache = f"paths.cache_dir={fresh_cache()}"
    results = {}
    for runtime in ("eager", "onnxruntime"):
        out = tmp_path / runtime
        overrides = [f"predict.backbone_runtime={runtime}", cache]
        predict(compose_cfg(out, [f"ckpt_path={ckpt}", f"input={photos}", *overrides], "predict"))
        results[runtime] = _probabilities(out)
    assert runtimes_used == [("eager", "fp32"), ("onnxruntime", "fp32")]
    assert results["eager"].keys() == results["onnxruntime"].keys() and len(results["eager"]) == 6
    for path, p in results["eager"].items():
        assert abs(results["onnxruntime"][path] - p) < 1e-4
    # Without a setting, the training run's own choice (auto) is used.
    predict(
        compose_cfg(
            tmp_path / "default", [f"ckpt_path={ckpt}", f"input={photos}", cache], "predict"
        )
    )
    assert runtimes_used[-1] == ("auto", "fp32")


def test_eval_runs_the_configured_runtime(trained_run, tmp_path, runtimes_used):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    metrics = {}
    for runtime in ("eager", "onnxruntime"):
        overrides = [f"ckpt_path={ckpt}", "data.num_workers=0", f"eval.backbone_runtime={runtime}"]
        metrics[runtime] = evaluate(compose_cfg(tmp_path / runtime, overrides, "eval"))["metrics"]
    assert runtimes_used == [("eager", "fp32"), ("onnxruntime", "fp32")]
    assert metrics["eager"]["test/acc"] == metrics["onnxruntime"]["test/acc"]
    assert abs(metrics["eager"]["test/loss"] - metrics["onnxruntime"]["test/loss"]) < 1e-4
