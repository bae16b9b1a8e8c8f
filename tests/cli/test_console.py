"""The console and train.log of a run: no known noise, Lightning's lines kept, the run's paths last."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from crackdet.cli.console import end_of_run_lines
from tests.conftest import TINY, run_entry

NOISE = ("LeafSpec", "litlogger", "Total FLOPs: 0")


def test_end_of_run_lines_finish_with_the_run_directory(tmp_path) -> None:
    lines = end_of_run_lines(tmp_path, "best.ckpt", [f"tensorboard --logdir {tmp_path}"])
    assert lines == [
        "Best checkpoint: best.ckpt",
        f"View it with: tensorboard --logdir {tmp_path}",
        f"Run directory: {tmp_path}",
    ]


@pytest.mark.slow
def test_smoke_run_console_is_quiet_complete_and_ends_with_the_run(tmp_path, synthetic_cache):
    # The model summary stays on: it printed the "Total FLOPs: 0" line.
    overrides = [o for o in TINY if o != "~callbacks.rich_model_summary"]
    run_dir = tmp_path / "run"
    result = run_entry(
        "train.py", *overrides, f"paths.cache_dir={synthetic_cache}", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console, noise
    assert "Trainable params" in console  # the summary itself is still shown
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[-1].endswith(f"Run directory: {run_dir}")
    assert f"View it with: tensorboard --logdir {run_dir}" in lines[-2]
    assert f"Best checkpoint: {run_dir / 'checkpoints' / 'best.ckpt'}" in lines[-3]

    log = (run_dir / "train.log").read_text()
    for line in ("`Trainer.fit` stopped", "Restoring states from the checkpoint", "Seed set to"):
        assert line in log, line
    assert f"Run directory: {run_dir}" in log

    # TensorBoard: the HParams view has the settings researchers compare, no plumbing, and its
    # metric columns are the run's own tags (no hp/* copies).
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    columns = set(start.session_start_info.hparams)
    assert {"lr", "augmentation", "trainer", "batch_size", "max_epochs", "weights"} <= columns
    assert {"bn_mode", "seed", "accelerator", "devices"} <= columns
    assert not any("_target_" in c or c.startswith(("paths", "hydra")) for c in columns)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"val/acc_best", "test/acc"} <= metric_tags
    assert not any(tag.startswith("hp/") for tag in accumulator.Tags()["scalars"])
    assert metric_tags <= set(accumulator.Tags()["scalars"])
