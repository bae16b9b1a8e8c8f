"""Shared behaviour of the entry points: user errors end the run with a message, not a traceback.

A run that stops this way at its start leaves its run directory as it was (crackdet.cli.run_dir).
"""

from __future__ import annotations

import gc
import io
import logging
import os
import shlex
import sys
from collections.abc import Callable
from contextlib import suppress
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


#: The open-file types whose buffers are flushed before the process leaves with os._exit.
_FILE_TYPES = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def run_entry_point(main: Callable[[], Any]) -> None:
    """Run an entry point's Hydra `main`, then end the process without the interpreter's teardown.

    Once `main` has returned, or exited with a status, the run's results are written. The exit
    handlers still run (logging's flush, temporary folders, child processes, the loggers' own),
    every file still open is flushed, and the process leaves with `os._exit`: that skips freeing
    torch's and Lightning's objects and modules one by one, about 1 s per process that writes
    nothing. An exception leaves the normal way, with its traceback.
    """
    from crackdet.seams import run_exit_handlers

    try:
        main()
        status = 0
    except SystemExit as exc:
        if not isinstance(exc.code, int | None):
            raise  # a message instead of a status: Python prints it and exits 1
        status = exc.code or 0
    if not run_exit_handlers():
        sys.exit(status)
    for handle in (o for o in gc.get_objects() if type(o) in _FILE_TYPES):
        # A closed pipe (OSError) or a handle closed meanwhile (ValueError): nothing to save there.
        with suppress(OSError, ValueError):
            handle.flush()
    os._exit(status)


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
