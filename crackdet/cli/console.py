"""The console: known noise of dependencies filtered by exact message, and the end-of-run lines."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from rich import get_console
from rich.text import Text

log = logging.getLogger("crackdet")

#: Lightning's internals call a deprecated torch pytree API (three times a run).
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
#: Lightning's advertisement, logged when no LitLogger is configured.
LITLOGGER_TIP = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
)
#: The model summary's FLOPs total, 0 unless the model has an example input (crackdet's has none).
ZERO_FLOPS_LINE = "Total FLOPs: 0"
#: The loggers Lightning's rank-zero messages go through (fabric's and the trainer's).
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with one exact text."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_known_noise() -> None:
    """Filter the LeafSpec deprecation and the litlogger tip, by their exact text (idempotent)."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(LITLOGGER_TIP))


class QuietRichModelSummary(RichModelSummary):
    """Lightning's rich model summary without its `Total FLOPs: 0` line."""

    @staticmethod
    def summarize(*args: Any, **kwargs: Any) -> None:
        """Print Lightning's summary, minus the FLOPs total when it is 0 (nothing was counted)."""
        console = get_console()
        with console.capture() as captured:
            RichModelSummary.summarize(*args, **kwargs)
        lines = captured.get().splitlines(keepends=True)
        kept = [line for line in lines if Text.from_ansi(line).plain.strip() != ZERO_FLOPS_LINE]
        console.file.write("".join(kept))
        console.file.flush()


def view_commands(loggers: Iterable[Logger], logdir: Path) -> list[str]:
    """The command that shows this run for each logger that has a viewer."""
    commands = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            commands.append(f"tensorboard --logdir {logdir}")
        elif isinstance(logger, MLFlowLogger) and getattr(logger, "tracking_uri", None):
            commands.append(f"mlflow ui --backend-store-uri {logger.tracking_uri}")
        elif isinstance(logger, WandbLogger):
            commands.append(f"wandb sync {Path(logger.save_dir or '.') / 'wandb' / 'latest-run'}")
    return commands


def end_of_run_lines(
    output_dir: Path, best_checkpoint: str | None, commands: Iterable[str]
) -> list[str]:
    """What every run prints last: the best checkpoint, how to view the run, its directory."""
    lines = [f"Best checkpoint: {best_checkpoint or 'none (no checkpoint was saved)'}"]
    lines += [f"View it with: {command}" for command in commands]
    lines.append(f"Run directory: {output_dir}")
    return lines


def report_end_of_run(
    output_dir: Path, best_checkpoint: str | None, loggers: Iterable[Logger], logdir: Path
) -> None:
    """Log the end-of-run lines (the run directory last)."""
    for line in end_of_run_lines(output_dir, best_checkpoint, view_commands(loggers, logdir)):
        log.info("%s", line)
