"""The operating point: the decision threshold on p(crack) chosen for a target recall.

An image is called a crack when `p(crack) >= threshold` (the rule of `decisions`, used by the
prediction files, the evaluation and the notebook). Training stores the threshold chosen on the
validation split in every checkpoint under `checkpoint["crackdet"]`; `stored_threshold` reads it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from crackdet.errors import ConfigError, DataError

#: The decision threshold when no operating point is known.
DEFAULT_THRESHOLD = 0.5
#: Missing a crack costs far more than a false alarm: by default keep 99% of cracks.
DEFAULT_TARGET_RECALL = 0.99
#: Where crackdet's own entries live in a Lightning checkpoint (plain floats: weights_only-safe).
CHECKPOINT_KEY = "crackdet"


def check_target_recall(target_recall: float, setting: str = "eval.target_recall") -> float:
    """The target recall as a float in (0, 1], or a ConfigError naming `setting`."""
    value = float(target_recall)
    if not 0 < value <= 1:
        raise ConfigError(f"{setting}={target_recall} must lie in (0, 1], e.g. 0.99.")
    return value


def decisions(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 (crack) where `probs >= threshold`, else 0."""
    return (probs >= threshold).long()


def threshold_metrics(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float
) -> dict[str, float | int]:
    """Accuracy, precision, recall, specificity, F1 and confusion counts at `threshold`."""
    # Imported here: torchmetrics takes seconds to import, and predict.py only reads thresholds.
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_f1_score,
        binary_precision,
        binary_recall,
        binary_specificity,
        binary_stat_scores,
    )

    preds = decisions(probs, threshold)
    labels = labels.long()
    tp, fp, tn, fn, _ = (int(v) for v in binary_stat_scores(preds, labels).tolist())
    return {
        "threshold": float(threshold),
        "acc": float(binary_accuracy(preds, labels)),
        "precision": float(binary_precision(preds, labels)),
        "recall": float(binary_recall(preds, labels)),
        "specificity": float(binary_specificity(preds, labels)),
        "f1": float(binary_f1_score(preds, labels)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


#: How far below the deciding crack's p(crack) the threshold sits. Float32 runtimes compute the
#: same probabilities to about 1e-7 (OpenVINO against eager, uint8 against float input), and a
#: threshold equal to one of them flips that image whenever another runtime computes it lower.
THRESHOLD_MARGIN = 1e-5


def threshold_for_recall(probs: torch.Tensor, labels: torch.Tensor, target_recall: float) -> float:
    """The threshold keeping `target_recall` of the cracks with the fewest false alarms.

    That is the p(crack) of the k-th most confident crack (k = target x cracks), set
    THRESHOLD_MARGIN lower, or halfway down to the next lower p(crack) of any image when that is
    nearer: every image of (probs, labels) is decided as at the crack's own p(crack), and a
    probability recomputed a hair lower by another float32 runtime still counts.
    """
    target = check_target_recall(target_recall)
    positives = torch.sort(probs[labels == 1].double(), descending=True).values
    if not len(positives):
        raise DataError("Cannot choose a threshold for a target recall: no crack images given.")
    # The k-th most confident crack is the highest threshold that keeps k cracks; the epsilon
    # stops float noise in target * n (0.07 * 100 = 7.000000000000001) from asking for one more.
    needed = math.ceil(target * len(positives) - 1e-9)
    deciding = float(positives[needed - 1])
    below = probs.double()[probs.double() < deciding]
    lowest = deciding - THRESHOLD_MARGIN
    if len(below):
        lowest = max(lowest, (deciding + float(below.max())) / 2)
    return max(lowest, 0.0)


def stored_operating_point(ckpt_path: str | Path) -> dict[str, float] | None:
    """`{"threshold", "target_recall"}` saved in a checkpoint by training, or None if absent."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; give a .ckpt file of a training run.")
    return operating_point_of(torch.load(path, map_location="cpu", weights_only=True, mmap=True))


def operating_point_of(checkpoint: dict[str, Any]) -> dict[str, float] | None:
    """`stored_operating_point` of a checkpoint already read."""
    entry = checkpoint.get(CHECKPOINT_KEY) or {}
    if entry.get("threshold") is None:
        return None
    return {"threshold": float(entry["threshold"]), "target_recall": float(entry["target_recall"])}


def stored_threshold(ckpt_path: str | Path) -> float | None:
    """The decision threshold training chose for this checkpoint, or None if it holds none."""
    point = stored_operating_point(ckpt_path)
    return None if point is None else point["threshold"]
