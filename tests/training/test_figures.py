"""TensorBoard figures: drawn on the chosen schedule, each stating data set, split, threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crackdet.errors import ConfigError
from crackdet.evaluation.tensorboard_images import captioned_grid, confusion_matrix_image
from crackdet.training.callbacks.figures import EvaluationFigures
from crackdet.training.train import train


class _Events:
    """Images and texts of every event file of a run (fit, validate and test write their own)."""

    def __init__(self, run_dir: Path):
        self.accumulators = []
        for event_file in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
            accumulator = EventAccumulator(
                str(event_file), size_guidance={"images": 0, "tensors": 0}
            )
            accumulator.Reload()
            self.accumulators.append(accumulator)

    def _all(self, kind: str, tag: str) -> list:
        found = [
            e
            for a in self.accumulators
            if tag in a.Tags()[kind]
            for e in getattr(a, kind.title())(tag)
        ]
        return sorted(found, key=lambda e: e.wall_time)

    def images(self, tag: str) -> list:
        """Image events of `tag`, oldest first."""
        return self._all("images", tag)

    def texts(self, tag: str) -> list[str]:
        """Text summaries of `tag`, oldest first."""
        return [e.tensor_proto.string_val[0].decode() for e in self._all("tensors", tag)]


def test_figures_follow_the_schedule_and_say_what_they_show(tiny_cfg, tmp_path: Path):
    run_dir = tmp_path / "every2"
    train(
        tiny_cfg(
            "trainer.max_epochs=3",
            "callbacks.evaluation_figures.every_n_epochs=2",
            "callbacks.evaluation_figures.at_end=true",
            run_dir=run_dir,
        )
    )
    events = _Events(run_dir)
    steps = [e.step for e in events.images("val/confusion_matrix")]
    # 4 training steps per epoch: epoch 1 (step 8) by the schedule, epoch 2 (step 12) at the
    # end, then the validation of the best checkpoint; epoch 0 (step 4) is skipped.
    assert 4 not in steps and {8, 12} <= set(steps) and len(steps) == 3
    assert len(events.images("test/confusion_matrix")) == 1
    texts = events.texts("val/misclassified/text_summary")
    data_set = Path(tiny_cfg().data.data_dir)
    for text in texts:
        assert f"val split of {data_set.name}" in text and str(data_set) in text
        assert "threshold 0.5 (default; not the stored operating point)" in text
    assert "epoch 2 (last)" in texts[1] and "checkpoint best.ckpt" in texts[2]


def test_figures_only_for_checkpoints_and_test_when_asked(tiny_cfg, tmp_path: Path):
    run_dir = tmp_path / "never"
    train(
        tiny_cfg(
            "trainer.max_epochs=2",
            "callbacks.evaluation_figures.every_n_epochs=0",
            "callbacks.evaluation_figures.at_end=false",
            run_dir=run_dir,
        )
    )
    events = _Events(run_dir)
    (validated,) = events.images("val/confusion_matrix")  # the best checkpoint's validation
    assert len(events.images("test/confusion_matrix")) == 1


def test_a_multirun_job_draws_its_figures_at_the_end_and_a_single_run_every_epoch(
    tiny_cfg, tmp_path: Path
):
    steps = {}
    for mode in ("RUN", "MULTIRUN"):
        run_dir = tmp_path / mode
        train(tiny_cfg("trainer.max_epochs=3", f"hydra.mode={mode}", run_dir=run_dir))
        steps[mode] = [e.step for e in _Events(run_dir).images("val/confusion_matrix")]
    # 4 steps per epoch; the last image is the validation of the best checkpoint.
    assert steps["RUN"][:3] == [4, 8, 12] and len(steps["RUN"]) == 4
    assert len(steps["MULTIRUN"]) == 1  # the best checkpoint's validation only


def test_bad_schedule_is_refused_by_name():
    with pytest.raises(ConfigError, match="callbacks.evaluation_figures.every_n_epochs=-1"):
        EvaluationFigures(every_n_epochs=-1)


def test_images_are_drawn_without_matplotlib_with_a_header():
    counts = torch.tensor([[5, 1], [2, 7]])
    matrix = confusion_matrix_image(counts, ["Negative", "Positive"], ["line one", "line two"])
    assert matrix.dtype == torch.uint8 and matrix.shape[0] == 3
    grid = captioned_grid(
        [torch.rand(3, 48, 48) for _ in range(5)], [["a.jpg", "p=0.9"]] * 5, ["title"], columns=4
    )
    # Two rows of four 160-px cells (48-px images are enlarged so captions fit) under a header.
    assert grid.shape[2] >= 4 * 160 and grid.shape[1] >= 2 * 160
