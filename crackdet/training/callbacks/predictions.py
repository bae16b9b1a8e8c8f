"""Writing one CSV row per evaluated image: path, label, probability of crack, prediction."""

from __future__ import annotations

from pathlib import Path

from crackdet.evaluation.predictions_file import PREDICTION_COLUMNS
from crackdet.evaluation.threshold import decisions
from crackdet.io import write_csv
from crackdet.training.callbacks.outputs import EpochOutputs


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
