"""Hydra/OmegaConf glue: resolvers the configs use and config-level checks."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

#: The checkout's top folder (the parent of the `crackdet` package).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """Make `${project_root:}` available to the configs; safe to call more than once."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


register_resolvers()
