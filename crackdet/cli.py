"""Shared behaviour of the entry points: user errors end the run with a message, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from crackdet.errors import CrackdetError

log = logging.getLogger("crackdet")


def run_main(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task(cfg)`; a CrackdetError is logged and exits with status 2 (1 under multirun)."""
    try:
        return task(cfg)
    except CrackdetError as exc:
        log.error("%s", exc)
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
            raise  # let the sweep record this job as failed and carry on with the others
        sys.exit(2)
