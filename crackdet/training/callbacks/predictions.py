"""Writing one CSV row per evaluated image: path, label, probability of crack, prediction."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from crackdet.evaluation.threshold import decisions
from crackdet.io import write_csv
from crackdet.training.callbacks.outputs import EpochOutputs

PREDICTION_COLUMNS = ("path", "label", "prob_crack", "pred")


class PredictionsWriter(EpochOutputs):
    """Writes `predictions_val.csv` / `predictions_test.csv` into the run directory."""

    def __init__(self, output_dir: str, threshold: float = 0.5):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.threshold = threshold

    def on_outputs(self, trainer, pl_module, stage, idx, probs, labels) -> None:
        """Write this epoch's predictions; a later epoch's file replaces an earlier one's."""
        paths = trainer.datamodule.datasets[stage].paths
        preds = decisions(probs, self.threshold)
        rows = (
            (paths[i], int(y), f"{p:.6f}", int(k))
            for i, y, p, k in zip(
                idx.tolist(), labels.tolist(), probs.tolist(), preds.tolist(), strict=True
            )
        )
        write_csv(self.output_dir / f"predictions_{stage}.csv", PREDICTION_COLUMNS, rows)


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
