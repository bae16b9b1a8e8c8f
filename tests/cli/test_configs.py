"""Every config file composes, alone and in the experiments users run."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crackdet.cli.config import CONFIG_DIR, run_settings
from tests.conftest import compose_cfg

# Groups whose options are chosen with `group=option` on the command line of train.py.
TRAIN_GROUPS = [
    "data",
    "data/augmentation",
    "model",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "debug",
]


def group_options(group: str) -> list[str]:
    """The option names of a config group, from its folder."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in TRAIN_GROUPS for o in group_options(g)],
)
def test_every_train_group_option_composes(tmp_path: Path, group: str, option: str) -> None:
    cfg = compose_cfg(tmp_path, [f"{group}={option}"])
    # Resolving everything catches broken interpolations, not just YAML syntax.
    container = run_settings(cfg)
    assert container["paths"]["output_dir"] == str(tmp_path)


def test_baseline_is_the_reference_notebook(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["experiment=baseline"])
    assert cfg.model.weights == "IMAGENET1K_V1"
    assert cfg.model.trainable == "head"
    assert cfg.model.bn_mode == "frozen"
    assert cfg.model.num_classes == 2
    assert cfg.model.optimizer._target_ == "torch.optim.Adam"
    assert cfg.model.optimizer.lr == pytest.approx(1e-3)
    assert cfg.data.batch_size == 100
    assert cfg.data.image_size == 224
    assert cfg.data.split == "seed"
    assert cfg.data.train_fraction == pytest.approx(0.75)
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406]
    assert cfg.data.augmentation.name == "none"
    assert cfg.trainer.max_epochs == 1
    assert cfg.optimized_metric == "val/acc"


def test_smoke_runs_offline_on_synthetic_data(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["experiment=smoke"])
    assert cfg.model.weights is None
    assert cfg.data.synthetic.n_per_class > 0
    assert "synthetic" in cfg.data.data_dir


def test_run_directories_are_unique_per_run() -> None:
    run_dir = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "hydra" / "default.yaml"))["run"][
        "dir"
    ]
    assert "%f" in run_dir, "run directories must carry microseconds so runs never share one"
    assert run_dir.startswith("${paths.log_dir}/${task_name}/")


@pytest.mark.parametrize("config_name", ["eval", "predict", "export"])
def test_other_entry_configs_compose(tmp_path: Path, config_name: str) -> None:
    cfg = compose_cfg(tmp_path, [f"ckpt_path={tmp_path / 'best.ckpt'}"], config_name=config_name)
    assert cfg.task_name == config_name
    container = run_settings(cfg)
    assert container["ckpt_path"] == str(tmp_path / "best.ckpt")


@pytest.mark.parametrize(
    "override", [f"{g}={o}" for g in ("hparams_search", "launcher") for o in group_options(g)]
)
def test_sweep_and_launcher_options_compose(tmp_path: Path, override: str) -> None:
    cfg = compose_cfg(tmp_path, [override])
    group, option = override.split("=")
    chosen = cfg.hydra.sweeper if group == "hparams_search" else cfg.hydra.launcher
    assert option.split("_")[0] in chosen._target_.lower()


def test_the_cache_folder_follows_crackdet_cache_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRACKDET_CACHE_DIR", str(tmp_path / "shared-cache"))
    assert compose_cfg(tmp_path / "run").paths.cache_dir == str(tmp_path / "shared-cache")
    monkeypatch.delenv("CRACKDET_CACHE_DIR")
    cfg = compose_cfg(tmp_path / "run")
    assert cfg.paths.cache_dir == f"{cfg.paths.log_dir}/cache" and cfg.paths.log_dir.endswith(
        "outputs"
    )
    assert compose_cfg(tmp_path / "run", ["paths.cache_dir=/elsewhere"]).paths.cache_dir == (
        "/elsewhere"
    )
