"""Comparing the jobs of a sweep: summary.csv and a console table per multirun, TensorBoard hparams.

Every job of a multirun leaves `sweep_job.json` (status, overrides, metrics) in its directory;
`summary.csv` in the multirun directory is rebuilt from those files after every job, so it covers
every job that ran even when a job failed or the sweep was interrupted.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from crackdet.cli.sweep_figure import plot_accuracy_vs_speed
from crackdet.distributed import process_rank
from crackdet.errors import ConfigError
from crackdet.io import write_csv, write_json

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

JOB_FILE = "sweep_job.json"
SUMMARY_FILE = "summary.csv"
#: Shown for every job beside its optimized metric, when the job logged them.
SUMMARY_METRICS = (
    "val/acc",
    "val/loss",
    "val/f1",
    "val/auroc",
    "test/acc",
    "test/loss",
    "test/f1",
    "test/auroc",
)
#: What each job cost, from the "cost" section of its metrics.json (crackdet.training.callbacks.cost).
COST_COLUMNS = ("parameters", "trainable_parameters", "train_images_per_s", "cached_features")
#: The subset the console table shows (summary.csv has them all).
TABLE_METRICS = ("val/acc", "val/loss", "test/acc", "test/f1")
SUMMARY_COLUMNS = (
    "rank",
    "job",
    "status",
    "overrides",
    "optimized_metric",
    "value",
    *SUMMARY_METRICS,
    *COST_COLUMNS,
    "error",
    "output_dir",
)
#: TensorBoard HParams columns (name, config key): the settings runs of a sweep differ in.
HPARAM_COLUMNS = (
    ("lr", "model.optimizer.lr"),
    ("weight_decay", "model.optimizer.weight_decay"),
    ("dropout", "model.dropout"),
    ("augmentation", "data.augmentation.name"),
    ("batch_size", "data.batch_size"),
    ("max_epochs", "trainer.max_epochs"),
    ("accelerator", "trainer.accelerator"),
    ("devices", "trainer.devices"),
    ("precision", "trainer.precision"),
    ("weights", "model.weights"),
    ("bn_mode", "model.bn_mode"),
    ("image_size", "data.image_size"),
    ("split", "data.split"),
    ("seed", "seed"),
)


def final_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """Every metric of a results dict at its final value (as `metric_value` looks them up)."""
    merged: dict[str, float] = {}
    for stage in ("fit", "validate", "test"):
        merged.update(results.get(stage) or {})
    return merged


def error_line(job_return: JobReturn) -> str:
    """`Type: first line of the message` of a failed job's exception ("" for a finished job)."""
    try:
        _ = job_return.return_value  # re-raises the job's exception
    except Exception as error:  # any error of the job is reported, not handled
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return ""


def job_record(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    """What the summary shows of one finished job, from its config, status and metrics.json."""
    output_dir = Path(config.hydra.runtime.output_dir)
    metrics_file = output_dir / "metrics.json"
    results = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    metrics = final_metrics(results)
    failed = job_return.status != JobStatus.COMPLETED
    name = config.get("optimized_metric")
    return {
        "job": int(config.hydra.job.num),
        "status": "failed" if failed else "ok",
        "overrides": list(config.hydra.overrides.task),
        "optimized_metric": name,
        "value": metrics.get(name),
        "metrics": {metric: metrics.get(metric) for metric in SUMMARY_METRICS},
        "cost": {column: (results.get("cost") or {}).get(column) for column in COST_COLUMNS},
        "error": error_line(job_return) if failed else "",
        "output_dir": str(output_dir),
    }


def is_maximized(direction: Any) -> bool:
    """True for `maximize`/`max` (also Optuna's Direction enum, or the first of several)."""
    if OmegaConf.is_list(direction) or isinstance(direction, (list, tuple)):
        direction = direction[0]
    name = str(getattr(direction, "name", direction)).lower()
    if name not in ("maximize", "max", "minimize", "min"):
        raise ConfigError(
            f"hydra.callbacks.sweep_summary.direction={direction} must be maximize or minimize."
        )
    return name.startswith("max")


def tie_break(metric: str | None) -> tuple[str, bool]:
    """The second ranking key (metric, maximized): val/loss, lowest first (val/acc for a loss)."""
    return ("val/acc", True) if metric == "val/loss" else ("val/loss", False)


def ranked(records: Iterable[Mapping[str, Any]], maximize: bool = True) -> list[dict[str, Any]]:
    """Jobs best first: by value, ties by `tie_break`, then job number; jobs without a value last."""
    records = [dict(r) for r in records]

    # A diverged job can report NaN: it ranks with the jobs that have no value, not first.
    def finite(value: Any) -> bool:
        return value is not None and math.isfinite(value)

    def key(r: Mapping[str, Any]) -> tuple[float, float, int]:
        second, second_max = tie_break(r.get("optimized_metric"))
        tie = (r.get("metrics") or {}).get(second)
        tie_key = (-tie if second_max else tie) if finite(tie) else math.inf
        return (-r["value"] if maximize else r["value"], tie_key, r["job"])

    scored = sorted((r for r in records if finite(r["value"])), key=key)
    rest = sorted((r for r in records if not finite(r["value"])), key=lambda r: r["job"])
    return scored + rest


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The records of every job of the sweep in `sweep_dir` that has finished so far."""
    return [json.loads(path.read_text()) for path in sorted(Path(sweep_dir).rglob(JOB_FILE))]


def write_summary(sweep_dir: Path, maximize: bool = True) -> list[dict[str, Any]]:
    """Rank the sweep's jobs and write them to `<sweep_dir>/summary.csv`; returns the rows."""
    rows = ranked(collect_jobs(sweep_dir), maximize)
    write_csv(
        Path(sweep_dir) / SUMMARY_FILE,
        SUMMARY_COLUMNS,
        (
            [
                position,
                r["job"],
                r["status"],
                " ".join(r["overrides"]),
                r["optimized_metric"],
                r["value"],
                *(r["metrics"].get(m) for m in SUMMARY_METRICS),
                *((r.get("cost") or {}).get(c) for c in COST_COLUMNS),
                r["error"],
                r["output_dir"],
            ]
            for position, r in enumerate(rows, start=1)
        ),
    )
    return rows


def varying_overrides(rows: list[Mapping[str, Any]]) -> list[list[str]]:
    """Each row's overrides without those every job shares (all of them for a single job)."""
    if len(rows) < 2:
        return [list(r["overrides"]) for r in rows]
    shared = set.intersection(*(set(r["overrides"]) for r in rows))
    return [[o for o in r["overrides"] if o not in shared] for r in rows]


def summary_table(rows: list[Mapping[str, Any]], title: str) -> Table:
    """A rich table of ranked summary rows: differing overrides, status, main metrics.

    Each override is on its own line and never cut: a job is told apart by its full overrides.
    """
    metrics = [m for m in TABLE_METRICS if any(r["metrics"].get(m) is not None for r in rows)]
    names = sorted({str(r["optimized_metric"]) for r in rows})
    second = sorted({tie_break(r["optimized_metric"])[0] for r in rows})
    overrides = varying_overrides(rows)
    widest = max((len(o) for job in overrides for o in job), default=9)
    table = Table(
        title=title,
        caption=f"ties: {' | '.join(second)} (better first), then job number",
    )
    table.add_column("#", no_wrap=True)
    table.add_column("job", no_wrap=True)
    table.add_column("overrides", min_width=widest, no_wrap=True, overflow="fold")
    for column in ("status", " | ".join(names), *metrics):
        table.add_column(column, overflow="fold")
    for position, (row, job_overrides) in enumerate(zip(rows, overrides, strict=True), 1):
        status = "ok" if row["status"] == "ok" else "[red]failed[/red]"
        values = [row["value"], *(row["metrics"].get(m) for m in metrics)]
        table.add_row(
            str(position),
            str(row["job"]),
            "\n".join(job_overrides),
            status,
            *("" if v is None else f"{v:.4f}" for v in values),
        )
    return table


def print_summary(rows: list[Mapping[str, Any]], title: str) -> None:
    """Print the ranked table, then each failed job's error."""
    console = Console()
    if not rows:
        console.print(f"{title}: no job has finished.")
        return
    table = summary_table(rows, title)
    # Never squeezed below its natural width: a narrow terminal wraps lines instead of cutting them.
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    console.width = max(console.width, natural)
    console.print(table)
    for row in rows:
        if row["status"] != "ok":
            console.print(f"[red]job {row['job']} failed:[/red] {row['error']}", highlight=False)


class SweepSummary(Callback):
    """Hydra callback: `summary.csv` in the multirun directory and a ranked table on the console."""

    def __init__(self, direction: Any = "auto") -> None:
        self.direction = direction
        self.maximize = True if direction == "auto" else is_maximized(direction)
        self._sweep_dir: Path | None = None

    def _maximized(self, config: DictConfig) -> bool:
        """The configured direction; `auto`: minimize losses and errors, maximize the rest."""
        if self.direction != "auto":
            return is_maximized(self.direction)
        metric = str(config.get("optimized_metric") or "")
        return not any(word in metric for word in ("loss", "ece", "error"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Make sure the table is printed even if a job fails.

        Hydra raises a failed job's error after the whole sweep ran, skipping on_multirun_end,
        so the table is then printed when the interpreter exits.
        """
        self._sweep_dir = Path(config.hydra.sweep.dir)
        self.maximize = self._maximized(config)
        atexit.register(self.report)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Record this job (rank zero of a multirun job only) and rebuild summary.csv."""
        if config.hydra.mode != RunMode.MULTIRUN or process_rank() != 0:
            return
        write_json(Path(config.hydra.runtime.output_dir) / JOB_FILE, job_record(config, job_return))
        write_summary(Path(config.hydra.sweep.dir), self._maximized(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the final summary.csv and print the table."""
        self.report()

    def report(self) -> None:
        """Write summary.csv and print the ranked table, once per multirun."""
        if self._sweep_dir is None or not self._sweep_dir.is_dir():
            return
        sweep_dir, self._sweep_dir = self._sweep_dir, None
        rows = write_summary(sweep_dir, self.maximize)
        plot_accuracy_vs_speed(rows, varying_overrides(rows), sweep_dir)
        print_summary(rows, f"{len(rows)} job(s), best first: {sweep_dir / SUMMARY_FILE}")


def hparam_columns(cfg: DictConfig) -> dict[str, Any]:
    """The settings of a run a researcher compares, as TensorBoard HParams columns."""
    columns: dict[str, Any] = {}
    for name, key in HPARAM_COLUMNS:
        value = OmegaConf.select(cfg, key, default=None)
        columns[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    optimizer = str(OmegaConf.select(cfg, "model.optimizer._target_", default=""))
    columns["optimizer"] = optimizer.rsplit(".", 1)[-1] or "null"
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        columns["trainer"] = str(HydraConfig.get().runtime.choices.get("trainer", "null"))
    return columns


def log_final_hparams(
    loggers: Iterable[Logger], cfg: DictConfig, results: Mapping[str, Any]
) -> None:
    """TensorBoard's HParams view: this run's main settings beside its final metrics.

    The metric columns read the run's own scalar tags (`val/acc_best`, `test/acc`, ...), so no
    copies of the metrics are logged.
    """
    final = final_metrics(results)
    wanted = (cfg.get("optimized_metric"), "val/acc_best", *SUMMARY_METRICS)
    tags = [m for m in dict.fromkeys(wanted) if m and m in final]
    if not tags:
        return
    # Imported here: the Hydra callback above runs in every entry point, predict.py included.
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    summaries = hparams(hparam_columns(cfg), {tag: final[tag] for tag in tags})
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Beside the run's scalars (Lightning has closed its writer): HParams reads them there.
            with SummaryWriter(log_dir=logger.log_dir) as writer:
                for summary in summaries:
                    writer.file_writer.add_summary(summary)
