"""Shared behaviour of the entry points: user errors end the run with a message, not a traceback.

A run that stops this way at its start leaves its run directory as it was (crackdet.cli.run_dir).
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from crackdet.cli.run_dir import undo_failed_start
from crackdet.errors import CrackdetError

log = logging.getLogger("crackdet")


def run_main(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task(cfg)`; a CrackdetError is logged and exits with status 2 (1 under multirun).

    A single run stopped this way before writing any result leaves no run directory behind.
    Warnings go through logging, so the run's log file holds them as the console shows them.
    """
    logging.captureWarnings(True)
    try:
        return task(cfg)
    except Exception as exc:
        # hydra.utils.instantiate wraps errors raised in constructors; report the user's one.
        error = exc if isinstance(exc, CrackdetError) else exc.__cause__
        if not isinstance(error, CrackdetError):
            raise
        log.error("%s", error)
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        # (A config composed without running Hydra, as in tests, has no mode.)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise error from None  # the sweep records this job as failed, with this message
        undo_failed_start()
        sys.exit(2)


def rerun_command(script: str, settings: dict[str, str]) -> str:
    """The shell command that runs `script` again: this run's overrides, `settings` replacing any."""
    from hydra.core.hydra_config import HydraConfig

    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [
            o
            for o in HydraConfig.get().overrides.task
            if o.split("=")[0].lstrip("+~") not in settings
        ]
    args = [*overrides, *(f"{key}={value}" for key, value in settings.items())]
    return " ".join(["python", script, *(shlex.quote(a) for a in args)])
