"""The operating point: a threshold reaching the target recall, stored with the training run."""

from __future__ import annotations

import json

import pytest
import torch

from crackdet.errors import ConfigError, DataError
from crackdet.evaluation.predictions_file import read_predictions
from crackdet.evaluation.threshold import (
    THRESHOLD_MARGIN,
    decisions,
    stored_operating_point,
    stored_threshold,
    threshold_for_recall,
    threshold_metrics,
)


def _recall(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> float:
    return threshold_metrics(probs, labels, threshold)["recall"]


@pytest.mark.parametrize("target", [0.07, 0.5, 0.9, 0.99, 1.0])
def test_chosen_threshold_is_the_highest_reaching_the_target_recall(target: float) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(300, generator=generator) < 0.4).long()
    # Rounded so that several images share a probability, as with a saturated model.
    probs = (torch.rand(300, generator=generator) * 0.6 + 0.4 * labels).round(decimals=2)
    threshold = threshold_for_recall(probs, labels, target)
    assert _recall(probs, labels, threshold) >= target
    # Just below the deciding crack's p(crack), deciding every image as that p(crack) would.
    deciding = float(probs[probs >= threshold].min())
    assert 0 < deciding - threshold <= THRESHOLD_MARGIN + 1e-12
    assert torch.equal(decisions(probs, threshold), decisions(probs, deciding))
    higher = probs[probs > deciding]
    if len(higher):
        assert _recall(probs, labels, float(higher.min())) < target


def test_a_probability_recomputed_a_hair_lower_keeps_its_decision() -> None:
    probs = torch.tensor([0.91, 0.4, 0.73, 0.2], dtype=torch.float32)
    labels = torch.tensor([1, 0, 1, 0])
    threshold = threshold_for_recall(probs, labels, 1.0)
    # Another float32 runtime: the same images, probabilities a few 1e-7 apart.
    recomputed = probs - 3e-7
    assert _recall(recomputed, labels, threshold) == 1.0
    assert threshold_metrics(recomputed, labels, threshold)["fp"] == 0


def test_the_margin_never_reaches_the_next_image() -> None:
    probs = torch.tensor([0.5, 0.499999, 0.1], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0])
    threshold = threshold_for_recall(probs, labels, 1.0)
    assert 0.499999 < threshold < 0.5  # halfway: the negative just below stays a negative
    assert decisions(probs, threshold).tolist() == [1, 0, 0]


def test_all_probabilities_equal_and_target_one() -> None:
    probs = torch.full((10,), 0.3)
    labels = torch.tensor([0, 1] * 5)
    for target in (0.5, 1.0):
        threshold = threshold_for_recall(probs, labels, target)
        assert threshold == pytest.approx(0.3, abs=THRESHOLD_MARGIN)
        assert _recall(probs, labels, threshold) == 1.0


def test_target_one_keeps_the_least_confident_crack() -> None:
    probs = torch.tensor([0.9, 0.05, 0.6, 0.02, 0.7])
    labels = torch.tensor([1, 1, 0, 0, 1])
    threshold = threshold_for_recall(probs, labels, 1.0)
    assert threshold == pytest.approx(0.05, abs=THRESHOLD_MARGIN)
    metrics = threshold_metrics(probs, labels, threshold)
    assert (metrics["recall"], metrics["fn"], metrics["fp"]) == (1.0, 0, 1)


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5])
def test_target_outside_zero_one_is_rejected(target: float) -> None:
    with pytest.raises(ConfigError, match="eval.target_recall"):
        threshold_for_recall(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]), target)


def test_no_cracks_to_choose_on_is_an_error() -> None:
    with pytest.raises(DataError, match="no crack images"):
        threshold_for_recall(torch.tensor([0.2, 0.8]), torch.tensor([0, 0]), 0.99)


def test_training_stores_the_threshold_in_checkpoint_and_metrics(trained_run) -> None:
    best = trained_run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    stored = checkpoint["crackdet"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["operating_point"] == stored == stored_operating_point(best)
    assert stored_threshold(best) == stored["threshold"]
    assert stored["target_recall"] == 0.99
    # Chosen on the best weights' validation predictions (written with 6 decimals).
    val = read_predictions(trained_run / "predictions_val.csv")
    assert _recall(val["prob_crack"], val["label"], stored["threshold"] - 1e-6) >= 0.99


def test_stored_threshold_of_a_checkpoint_without_one(tmp_path) -> None:
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    assert stored_threshold(path) is None
    with pytest.raises(ConfigError, match="does not exist"):
        stored_threshold(tmp_path / "missing.ckpt")
