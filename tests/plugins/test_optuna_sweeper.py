"""The Optuna sweeper plugin (hydra/sweeper=crackdet_optuna) on Optuna >= 4 and SQLAlchemy 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from crackdet.cli.config import PROJECT_ROOT
from tests.conftest import run_entry
from tests.plugins.quadratic_app import objective

optuna = pytest.importorskip("optuna", minversion="4")
sqlalchemy = pytest.importorskip("sqlalchemy", minversion="2")

from hydra_plugins.crackdet_plugins.optuna_sweeper import (  # noqa: E402
    OptunaSweeper,
    distribution,
    search_space,
)

APP = "tests/plugins/quadratic_app.py"


def sweep(sweep_dir: Path, storage: str, *overrides: str):
    """`python quadratic_app.py -m` with the plugin, everything written below sweep_dir."""
    return run_entry(
        APP,
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.storage={storage}",
        *overrides,
    )


def stored(storage: str) -> list:
    return optuna.load_study(study_name="quadratic", storage=storage).trials


def test_a_sqlite_study_of_3_trials_resumes_to_5_with_new_trials(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = sweep(tmp_path / "first", storage, "hydra.sweeper.n_trials=3")
    assert first.returncode == 0, first.stderr[-3000:]
    trials = stored(storage)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    # Each trial holds the value its job returned for the parameters it was given.
    for trial in trials:
        assert trial.value == pytest.approx(objective(**trial.params))
        assert trial.user_attrs["output_dir"] == str(tmp_path / "first" / str(trial.number))
    results = yaml.safe_load((tmp_path / "first" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(t.value for t in trials))
    assert set(results["best_params"]) == {"x", "n", "shape"}

    second = sweep(tmp_path / "second", storage, "hydra.sweeper.n_trials=5")
    assert second.returncode == 0, second.stderr[-3000:]
    trials = stored(storage)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state.name == "COMPLETE" for t in trials)
    # Only the two missing trials ran, in job directories named after their trial numbers,
    # with parameters the first session did not try (the seed moved past the stored trials).
    assert sorted(p.name for p in (tmp_path / "second").iterdir() if p.is_dir()) == ["3", "4"]
    first_params = [t.params for t in trials[:3]]
    assert all(t.params not in first_params for t in trials[3:])

    again = sweep(tmp_path / "third", storage, "hydra.sweeper.n_trials=5")
    assert again.returncode == 0 and len(stored(storage)) == 5
    assert "nothing to run" in again.stdout + again.stderr


def test_the_same_seed_draws_the_same_trials(tmp_path) -> None:
    runs = [sweep(tmp_path / name, "null", "hydra.sweeper.n_trials=2") for name in ("a", "b")]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-3000:]
    best = [yaml.safe_load((tmp_path / n / "optimization_results.yaml").read_text()) for n in "ab"]
    assert best[0]["best_params"] == best[1]["best_params"]


@pytest.mark.slow
def test_trials_run_through_the_submitit_launcher(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = sweep(
        tmp_path / "sweep",
        storage,
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "sweep" / ".submitit").is_dir()
    trials = stored(storage)
    assert len(trials) == 2
    assert all(t.value == pytest.approx(objective(**t.params)) for t in trials)


def test_a_failed_trial_is_stored_as_failed_and_stops_the_search(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = sweep(tmp_path / "sweep", storage, "shape=missing_attribute_${oc.env:NO_SUCH_VAR}")
    assert result.returncode != 0
    assert [t.state.name for t in stored(storage)] == ["FAIL"]


def test_search_space_from_hydra_sweep_syntax() -> None:
    space, fixed = search_space(
        {
            "lr": "tag(log, interval(1e-5, 1e-1))",
            "aug": "choice(none, flip)",
            "n": "range(1, 8, 2)",
        },
        ["lr=0.01", "+extra=interval(0, 10)", "seed=3"],
    )
    assert fixed == ["lr=0.01", "seed=3"]  # a fixed value replaces the searched one
    assert set(space) == {"aug", "n", "+extra"}
    assert space["aug"] == optuna.distributions.CategoricalDistribution(["none", "flip"])
    assert space["n"] == optuna.distributions.IntDistribution(1, 7, step=2)
    assert space["+extra"] == optuna.distributions.FloatDistribution(0, 10)
    [lr] = OverridesParser.create().parse_overrides(["lr=tag(log, interval(1e-5, 1e-1))"])
    assert distribution(lr) == optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)


def test_without_optuna_the_search_names_the_extra_to_install(monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    sweeper = OptunaSweeper({}, "minimize", None, "s", 1, 1, 0.0, None)
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2
    assert 'pip install "crackdet[search]"' in caplog.text


@pytest.mark.slow
def test_launcher_slurm_without_the_extra_names_it(tmp_path) -> None:
    # As if hydra-submitit-launcher were not installed.
    hide = "import sys; sys.modules['hydra_plugins.hydra_submitit_launcher'] = None; "
    run = "import runpy; runpy.run_path('train.py', run_name='__main__')"
    result = subprocess.run(
        [sys.executable, "-c", hide + run, "-m", "launcher=slurm", f"hydra.sweep.dir={tmp_path}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'pip install "crackdet[slurm]"' in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
