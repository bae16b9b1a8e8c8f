"""Shared fixtures: composing the real configs, shrunk to run in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import DictConfig

from crackdet.cli.config import PROJECT_ROOT, compose_config
from crackdet.data.synthetic import make_synthetic_dataset

#: The shared 2,000-image sample of the real data set, beside the checkout (absent in user clones).
REAL_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "concrete_crack_sample"
needs_real_sample = pytest.mark.skipif(
    not (REAL_SAMPLE / "Positive").is_dir(),
    reason=f"real data sample not found at {REAL_SAMPLE} (only present on the project's machines)",
)

#: Overrides that make `experiment=smoke` tiny: 48x48 images, a few dozen of them, one epoch.
TINY = [
    "experiment=smoke",
    "data.synthetic.n_per_class=20",
    "data.synthetic.size=48",
    "data.image_size=48",
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "~callbacks.rich_progress_bar",
    "~callbacks.rich_model_summary",
]


#: Tests compose configs exactly as the entry points and benchmarks do.
compose_cfg = compose_config


@pytest.fixture(scope="session", autouse=True)
def default_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default `paths.cache_dir` of every run in the session, in-process or not.

    Not the checkout's outputs/cache: the test backbones' ONNX exports alone are hundreds of MB.
    """
    cache = tmp_path_factory.mktemp("default-cache")
    os.environ["CRACKDET_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture
def tiny_cfg(tmp_path: Path, synthetic_cache: Path):
    """A factory: `tiny_cfg(*overrides)` gives a seconds-long training config in tmp_path/run."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_cfg(
            run_dir or tmp_path / "run",
            [*TINY, f"paths.cache_dir={synthetic_cache}", *overrides],
        )

    return make


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir shared by the session, so synthetic images are generated once."""
    cache = tmp_path_factory.mktemp("cache")
    make_synthetic_dataset(cache / "synthetic" / "n20_s48_seed0", n_per_class=20, size=48)
    return cache


@pytest.fixture(scope="session")
def shared_runtimes(synthetic_cache: Path) -> Path:
    """The session's `runtimes/` folder: backbone ONNX exports and OpenVINO's compiled models.

    An export is keyed on the weights, the input size and the torch version, and costs seconds
    (4-6 s for a ResNet-18). Every tiny run of the session has the same random backbone.
    """
    folder = synthetic_cache / "runtimes"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def fresh_cache(tmp_path: Path, shared_runtimes: Path):
    """A factory: an empty `paths.cache_dir` (no scans, no features) in tmp_path/<name>.

    Its `runtimes/` links to the session's, as benchmarks/throughput.py links its cold runs':
    what a machine that ran the backbone before keeps. Runs that share it must not build an
    OpenVINO runtime at the same time (its compiled model is written in place).
    """

    def make(name: str = "cache") -> Path:
        cache = tmp_path / name
        cache.mkdir()
        (cache / "runtimes").symlink_to(shared_runtimes, target_is_directory=True)
        return cache

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synthetic_cache: Path) -> Path:
    """A finished tiny training run (checkpoints, predictions, metrics.json), made once."""
    from crackdet.training.train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_cfg(run_dir, [*TINY, f"paths.cache_dir={synthetic_cache}"]))
    return run_dir


@pytest.fixture
def image_folder(tmp_path: Path):
    """A factory for a small Positive/Negative folder of synthetic JPEGs."""

    def make(n_per_class: int = 6, size: int = 40, name: str = "images") -> Path:
        return make_synthetic_dataset(tmp_path / name, n_per_class=n_per_class, size=size)

    return make


def run_entry(
    script: str, *args: str, timeout: float = 600, **kwargs
) -> subprocess.CompletedProcess:
    """Run an entry point (`train.py`, ...) in a subprocess from the project root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        cwd=kwargs.pop("cwd", PROJECT_ROOT),
        env=kwargs.pop("env", env),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


#: Entry points `run_entries` runs side by side: a start-up (imports) keeps one core busy, so on
#: this project's 2-core machines two at a time take half as long (more do not help).
PARALLEL_ENTRIES = max(2, min(8, os.cpu_count() or 2))


def run_entries(
    runs: dict[Hashable, tuple[str, Sequence[str]]], **kwargs
) -> dict[Hashable, subprocess.CompletedProcess]:
    """`run_entry(script, *args)` for every `{key: (script, args)}`, several at a time."""
    with ThreadPoolExecutor(PARALLEL_ENTRIES) as pool:
        started = {
            key: pool.submit(run_entry, script, *args, **kwargs)
            for key, (script, args) in runs.items()
        }
        return {key: future.result() for key, future in started.items()}


def selected_params(request: pytest.FixtureRequest, test_name: str) -> list[dict]:
    """The parameters of every selected case of `test_name` in the requesting module."""
    return [
        item.callspec.params
        for item in request.session.items
        if item.module is request.module and getattr(item, "originalname", None) == test_name
    ]
