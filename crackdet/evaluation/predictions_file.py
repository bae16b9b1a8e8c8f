"""The per-image predictions CSV (path, label, prob_crack, pred) that training and eval write."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

PREDICTION_COLUMNS = ("path", "label", "prob_crack", "pred")


def read_predictions(path: str | Path) -> dict[str, torch.Tensor | list[str]]:
    """Load a predictions CSV back into paths, labels and probabilities."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "path": [r["path"] for r in rows],
        "label": torch.tensor([int(r["label"]) for r in rows]),
        "prob_crack": torch.tensor([float(r["prob_crack"]) for r in rows]),
        "pred": torch.tensor([int(r["pred"]) for r in rows]),
    }
