"""End to end: a training run writes what a researcher looks at, resumes, and repeats itself."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crackdet.errors import ConfigError
from crackdet.training.train import metric_value, train
from tests.conftest import REAL_SAMPLE, needs_real_sample


def tensorboard_tags(run_dir: Path) -> dict[str, list[str]]:
    """Scalar and image tags of every event file below run_dir/tensorboard."""
    tags: dict[str, set[str]] = {"scalars": set(), "images": set()}
    for event_file in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        for kind in tags:
            tags[kind].update(accumulator.Tags()[kind])
    return {k: sorted(v) for k, v in tags.items()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, synthetic_cache) -> tuple[Path, dict]:
    """One tiny smoke run shared by the checks below."""
    from tests.conftest import TINY, compose_cfg

    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    cfg = compose_cfg(
        run_dir, [*TINY, f"paths.cache_dir={synthetic_cache}", "trainer.max_epochs=2"]
    )
    return run_dir, train(cfg)


def test_run_directory_holds_every_output(smoke_run) -> None:
    run_dir, results = smoke_run
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))
    assert {"fit", "validate", "test"} <= set(metrics)
    for key in (
        "val/acc",
        "val/acc_best",
        "val/precision",
        "val/recall",
        "val/specificity",
        "val/f1",
        "val/auroc",
        "train/loss",
    ):
        assert key in metrics["fit"]
    assert metrics["test"]["test/samples"] == 6  # 15% of 40 synthetic images


def test_predictions_csvs_have_one_row_per_image(smoke_run) -> None:
    run_dir, results = smoke_run
    for stage, n in (("val", 6), ("test", 6)):
        rows = read_csv(run_dir / f"predictions_{stage}.csv")
        assert list(rows[0]) == ["path", "label", "prob_crack", "pred"]
        assert len(rows) == n and len({r["path"] for r in rows}) == n
        for row in rows:
            assert Path(row["path"]).is_file()
            assert row["label"] == ("1" if "/Positive/" in row["path"] else "0")
            assert row["pred"] == ("1" if float(row["prob_crack"]) >= 0.5 else "0")
        accuracy = sum(r["label"] == r["pred"] for r in rows) / n
        assert accuracy == pytest.approx(
            results["test" if stage == "test" else "validate"][f"{stage}/acc"]
        )


def test_tensorboard_has_loss_curve_metrics_and_confusion_matrices(smoke_run) -> None:
    run_dir, _ = smoke_run
    tags = tensorboard_tags(run_dir)
    for scalar in ("train/loss", "val/acc", "val/acc_best", "test/acc", "val/auroc"):
        assert scalar in tags["scalars"]
    assert "val/confusion_matrix" in tags["images"]
    assert "test/confusion_matrix" in tags["images"]
    steps = []
    for event_file in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        if "train/loss" in accumulator.Tags()["scalars"]:
            steps += [e.step for e in accumulator.Scalars("train/loss")]
    # One point per batch, like the reference notebook's loss curve: 28 images / 8 = 4 per epoch.
    assert len(steps) == 8


def test_optimized_metric_is_returned(smoke_run) -> None:
    _, results = smoke_run
    assert metric_value(results, "val/acc_best") == results["fit"]["val/acc_best"]
    with pytest.raises(ConfigError, match="optimized_metric=val/nope"):
        metric_value(results, "val/nope")


def test_resume_from_last_checkpoint(smoke_run, tiny_cfg, tmp_path: Path) -> None:
    run_dir, _ = smoke_run
    last = run_dir / "checkpoints" / "last.ckpt"
    cfg = tiny_cfg(f"ckpt_path={last}", "trainer.max_epochs=3", run_dir=tmp_path / "resumed")
    train(cfg)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 12  # 2 epochs before + 1 more
    assert torch.load(last, weights_only=True)["global_step"] == 8  # the earlier run is untouched


#: Each seed draws its own random backbone. Eager features: the default runtime would export
#: every new backbone to ONNX first (seconds each), which these tests are not about.
EAGER = "model.backbone_runtime=eager"


def test_same_seed_same_metrics(tiny_cfg, tmp_path: Path) -> None:
    first = train(tiny_cfg("seed=7", EAGER, run_dir=tmp_path / "a"))
    second = train(tiny_cfg("seed=7", EAGER, run_dir=tmp_path / "b"))
    other = train(tiny_cfg("seed=8", EAGER, run_dir=tmp_path / "c"))
    assert first["fit"] == second["fit"] and first["test"] == second["test"]
    assert first["fit"]["train/loss"] != other["fit"]["train/loss"]


def test_a_run_directory_is_never_reused(smoke_run, tiny_cfg) -> None:
    run_dir, _ = smoke_run
    before = (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(tiny_cfg(run_dir=run_dir))
    assert (run_dir / "checkpoints" / "best.ckpt").read_bytes() == before


def test_the_best_checkpoint_is_the_model_checkpoint_callbacks(smoke_run, tiny_cfg, tmp_path):
    run_dir, results = smoke_run
    assert results["best_checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    # Without it, last.ckpt (another checkpoint callback) must not be taken for the best weights.
    alone = train(tiny_cfg("~callbacks.model_checkpoint", run_dir=tmp_path / "no_best"))
    assert (tmp_path / "no_best" / "checkpoints" / "last.ckpt").is_file()
    assert alone["best_checkpoint"] is None and "operating_point" not in alone


@pytest.mark.slow
@needs_real_sample
def test_real_images_random_backbone_well_above_chance(tiny_cfg, tmp_path: Path) -> None:
    # 2,000 real images at 64 px with a random-init frozen backbone: far from the reference's
    # ImageNet features, but a crack must still be told from concrete well above chance.
    cfg = tiny_cfg(
        f"data.data_dir={REAL_SAMPLE}",
        "~data.synthetic",
        "data.image_size=64",
        "data.batch_size=50",
        "data.split=stratified",
        "trainer.max_epochs=3",
        "model.optimizer.lr=3e-3",
        "data.num_workers=2",
    )
    results = train(cfg)
    assert results["test"]["test/samples"] == pytest.approx(300, abs=2)
    assert results["test"]["test/acc"] >= 0.75


def test_optimizer_and_scheduler_are_swapped_from_the_command_line(
    tiny_cfg, tmp_path: Path
) -> None:
    # The README's example overrides: another optimizer, and a scheduler where there was none.
    cfg = tiny_cfg(
        "model.optimizer._target_=torch.optim.SGD",
        "+model.optimizer.momentum=0.9",
        "model.scheduler={_target_: torch.optim.lr_scheduler.CosineAnnealingLR, "
        "_partial_: true, T_max: 2}",
        "trainer.max_epochs=2",
        "test=false",
    )
    results = train(cfg)
    checkpoint = torch.load(results["best_checkpoint"], weights_only=True)
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    assert len(checkpoint["lr_schedulers"]) == 1
    # Cosine annealing over 2 epochs: the learning rate has fallen below its start by the end.
    assert results["fit"]["lr-SGD"] < cfg.model.optimizer.lr


def test_unseeded_run_still_splits_reproducibly(tiny_cfg, tmp_path: Path) -> None:
    first = train(tiny_cfg("seed=null", EAGER, run_dir=tmp_path / "a"))
    second = train(tiny_cfg("seed=null", EAGER, run_dir=tmp_path / "b"))
    paths = [
        [row["path"] for row in read_csv(Path(r["output_dir"]) / "predictions_test.csv")]
        for r in (first, second)
    ]
    assert paths[0] == paths[1] and len(paths[0]) == 6


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train=false"], "train=false tests a trained model, but ckpt_path is not set"),
        (["data.split=all"], "data.split=all puts every image in the test split"),
    ],
)
def test_runs_that_cannot_work_are_refused_before_any_work(tiny_cfg, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        train(tiny_cfg(*overrides))


def test_the_folder_is_checked_once_per_run(tiny_cfg, monkeypatch) -> None:
    import crackdet.data.datamodule as datamodule_module

    calls = []
    real = datamodule_module.scan_folder

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(datamodule_module, "scan_folder", counting)
    results = train(tiny_cfg("trainer.max_epochs=2"))
    assert {"fit", "validate", "test"} <= set(results)  # three stages, one scan
    assert len(calls) == 1
