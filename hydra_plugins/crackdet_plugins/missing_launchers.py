"""Without crackdet[slurm], `launcher=slurm` stops with one line naming the extra.

Hydra alone would say only that the option `hydra/launcher/submitit_slurm` does not exist. These
stand-ins are registered only when hydra-submitit-launcher is not installed.
"""

# No `from __future__ import annotations`: see optuna_sweeper.py.
import importlib.util
import logging
import sys
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher

from crackdet.extras import MissingExtraError

log = logging.getLogger(__name__)

SUBMITIT_LAUNCHERS = ("submitit_slurm", "submitit_local")


class MissingSubmititLauncher(Launcher):
    """Stands in for hydra-submitit-launcher's launchers: reports the missing extra, exit 2."""

    def __init__(self, name: str, **_: Any) -> None:
        error = MissingExtraError(
            f"hydra/launcher={name} (launcher=slurm, launcher=submitit_local) needs the "
            "hydra-submitit-launcher package, which is not installed. Install it with: "
            'pip install "crackdet[slurm]" (or pip install -e ".[slurm]" in a checkout).'
        )
        log.error("%s", error)
        sys.exit(2)

    def setup(self, **kwargs: Any) -> None:  # never reached: __init__ exits
        """Part of Hydra's launcher interface."""

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:  # never reached
        """Part of Hydra's launcher interface."""


def register_missing_launchers() -> None:
    """Register the stand-ins under the names hydra-submitit-launcher would use."""
    for name in SUBMITIT_LAUNCHERS:
        ConfigStore.instance().store(
            group="hydra/launcher",
            name=name,
            node={"_target_": f"{__name__}.MissingSubmititLauncher", "name": name},
            provider="crackdet",
        )


if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
    register_missing_launchers()
