"""Loggers that continue an interrupted run's files when it is resumed in its own directory."""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from crackdet.seams import continuing_csv_writer


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run adds its rows to the earlier ones."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer of metrics.csv and hparams.yaml."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = continuing_csv_writer()(log_dir=self.log_dir)
        return self._experiment
