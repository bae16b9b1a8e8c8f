"""Optional stacks installed as extras (`pip install "crackdet[mlflow]"`): a clear error when absent."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from crackdet.errors import ConfigError

#: The package a logger needs, by the last part of its `_target_`, and the extra that installs it.
LOGGER_EXTRAS = {
    "mlflow_logger": ("mlflow", "mlflow"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "wandb_logger": ("wandb", "wandb"),
    "WandbLogger": ("wandb", "wandb"),
}


class MissingExtraError(ConfigError):
    """A setting needs a package of an optional extra that is not installed."""


def require(module: str, extra: str, setting: str) -> ModuleType:
    """Import `module`, or raise a one-line MissingExtraError naming `setting` and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{setting} needs the {module} package, which is not installed. "
            f'Install it with: pip install "crackdet[{extra}]" (or pip install -e ".[{extra}]" '
            "in a checkout)."
        ) from None


def check_logger_extras(loggers: Mapping[str, Any] | None) -> None:
    """Every configured logger's package is installed (`logger=mlflow` needs crackdet[mlflow])."""
    for name, logger in (loggers or {}).items():
        target = str((logger or {}).get("_target_", ""))
        needed = LOGGER_EXTRAS.get(target.rsplit(".", 1)[-1])
        if needed:
            require(needed[0], needed[1], f"logger={name}")
