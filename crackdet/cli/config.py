"""Hydra/OmegaConf glue: resolvers the configs use and config-level checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

#: The checkout's top folder (the parent of the `crackdet` package).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def backbone_preprocessing(field: str, backbone: str, weights: str | None) -> Any:
    """`image_size`, `mean` or `std` of the backbone's weights (crackdet.models.backbone)."""
    from crackdet.models.backbone import preprocessing

    value = getattr(preprocessing(backbone, weights), field)
    return list(value) if isinstance(value, tuple) else value


def in_multirun(then: Any, otherwise: Any) -> Any:
    """`then` in a job of a multirun (`-m`), else `otherwise`: a default that sweeps change."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return otherwise
    return then if HydraConfig.get().mode == RunMode.MULTIRUN else otherwise


def register_resolvers() -> None:
    """Make `${project_root:}`, `${backbone_preprocessing:...}` and `${in_multirun:a,b}` available.

    Safe to call more than once.
    """
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("in_multirun"):
        OmegaConf.register_new_resolver("in_multirun", in_multirun)
    if not OmegaConf.has_resolver("backbone_preprocessing"):
        OmegaConf.register_new_resolver("backbone_preprocessing", backbone_preprocessing)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The run's whole configuration, resolved to plain values, without Hydra's own section."""
    return OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )


def compose_config(
    output_dir: str | Path, overrides: list[str] | None = None, config_name: str = "train"
) -> DictConfig:
    """Compose a config as `python <entry>.py <overrides>` would, writing into `output_dir`.

    For code that runs a job in-process without @hydra.main (tests, benchmarks, notebooks).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[f"hydra.run.dir={output_dir}", *(overrides or [])],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


register_resolvers()
