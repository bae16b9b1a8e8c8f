"""DDP under Hydra runs and multiruns: each child process re-runs its parent's job.

Lightning's `ddp` strategy starts its extra processes by re-running the script with `sys.argv`.
Under a Hydra multirun that command holds `-m` and every sweep value, and points at a fresh
timestamped run directory: each child would start its own sweep in stray directories.
`DistributedJobs` (a Hydra callback, see conf/hydra/default.yaml) makes each child re-run exactly
its parent's job in the parent's job directory, and cleans up after the job so that the next job
of the sweep can start processes again.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import TaskFunction
from omegaconf import DictConfig

from crackdet.distributed import process_rank
from crackdet.seams import replace_ddp_child_command

#: Environment variables Lightning's subprocess launcher sets in the launching process itself.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def entry_command() -> list[str]:
    """How this process's entry point was started: `python script.py` or `python -m module`."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        return [sys.executable, os.path.abspath(sys.argv[0])]
    return [sys.executable, "-m", spec.name]


def child_command(entry: list[str], local_rank: int) -> tuple[list[str], str]:
    """The command of DDP child `local_rank`: the current Hydra job's config, in its directory."""
    hydra_cfg = HydraConfig.get()
    flags = [f"--config-name={hydra_cfg.job.config_name}"]
    for source in hydra_cfg.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            flags.append(f"--config-path={source.path}")
        elif source.provider == "command-line":
            flags.append(f"--config-dir={source.path}")
    command = [
        *entry,
        *flags,
        *hydra_cfg.overrides.task,
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        # One .hydra/ per job (the parent's); RUN even when a config sets hydra.mode=MULTIRUN.
        "hydra.output_subdir=null",
        "hydra.mode=RUN",
    ]
    return command, hydra_cfg.runtime.cwd


class DistributedJobs(Callback):
    """Hydra callback: DDP children re-run their parent's job; only rank zero logs below WARNING."""

    def __init__(self) -> None:
        # Hydra makes its callbacks in the launching process; a submitit worker gets a copy, so
        # its DDP children still re-run train.py rather than the worker's own module.
        self._entry = entry_command()
        self._saved_env: dict[str, str | None] = {}
        self._restore_command: Callable[[], None] | None = None
        self._quieted = False

    def on_job_start(
        self, config: DictConfig, *, task_function: TaskFunction, **kwargs: Any
    ) -> None:
        """Route Lightning's child-process command to this job; quiet the other ranks' logs.

        Only a job with `trainer` settings builds a Trainer, the one thing that starts DDP
        processes; the others (predict.py, export.py) leave Lightning unimported (seconds).
        """
        self._saved_env = {name: os.environ.get(name) for name in LAUNCHER_ENV}
        if "trainer" in config:
            self._restore_command = replace_ddp_child_command(partial(child_command, self._entry))
        if process_rank() != 0:
            # Also Lightning's own loggers, which set their level to INFO.
            logging.disable(logging.INFO)
            self._quieted = True

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Leave the process as the job found it, so a sweep's next job can launch DDP again."""
        import torch.distributed as dist  # here: Hydra imports its callbacks before any job

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self._restore_command is not None:
            self._restore_command()
            self._restore_command = None
        if self._quieted:
            logging.disable(logging.NOTSET)
            self._quieted = False
