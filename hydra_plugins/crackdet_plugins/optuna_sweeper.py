"""`hydra/sweeper=crackdet_optuna`: an Optuna search whose trials are Hydra jobs of any launcher.

Optuna is imported only when a search starts, so every other run stays fast and works without the
`search` extra. Each batch of `n_jobs` trials is asked from the study, launched as one batch of
jobs by the configured launcher (local, joblib, submitit/SLURM) and told back with its return
value; with a database `storage` a re-run of the same command continues the study.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from crackdet.errors import ConfigError
from crackdet.extras import require

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


@dataclass
class OptunaSweeperConf:
    """The sweeper's settings, under `hydra.sweeper`."""

    _target_: str = "hydra_plugins.crackdet_plugins.optuna_sweeper.OptunaSweeper"
    #: The sampler is built by the sweeper, once it knows the seed to use.
    _recursive_: bool = False
    #: Any optuna.samplers class; a `seed` is shifted by the trials a stored study already holds.
    sampler: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    direction: str = "minimize"
    #: null: in memory; a database URL (sqlite:///outputs/optuna.db) keeps the study to continue it.
    storage: str | None = None
    study_name: str | None = None
    #: The number of finished trials the study should hold when the search ends.
    n_trials: int = 20
    #: Trials asked and launched together (run in parallel by a parallel launcher).
    n_jobs: int = 1
    #: Share of failed trials in a batch that is tolerated before the search stops.
    max_failure_rate: float = 0.0
    #: The search space in Hydra's sweep syntax: `interval(0, 1)`, `tag(log, interval(...))`,
    #: `range(1, 8)`, `choice(a, b)`; sweeps given on the command line are added to it.
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="crackdet_optuna", node=OptunaSweeperConf, provider="crackdet"
)


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (`choice`, `range`, `interval`, `tag(log, ...)`)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        choices = list(override.sweep_iterator())
        if isinstance(value, RangeSweep) and all(isinstance(c, int) for c in choices):
            step = int(value.step)
            return IntDistribution(min(choices), max(choices), step=abs(step))
        return CategoricalDistribution(choices)
    if isinstance(value, IntervalSweep):  # always real numbers in Hydra's syntax
        log_scale = "log" in value.tags
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ConfigError(
        f"hydra.sweeper.params: {override.input_line} is not a search range; use choice(...), "
        "range(...), interval(...) or tag(log, interval(...))."
    )


def search_space(
    params: Mapping[str, str] | None, arguments: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """The distributions to search (params, then command-line sweeps) and the fixed overrides."""
    parser = OverridesParser.create()
    configured = parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()])
    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in [*configured, *parser.parse_overrides(list(arguments))]:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            # A fixed value on the command line replaces a searched one of the config.
            space.pop(override.get_key_element(), None)
            fixed.append(override.input_line)
    return space, fixed


def stored_trials(optuna: Any, storage: str | None, study_name: str | None) -> int:
    """How many trials the study already holds in `storage` (0 in memory or for a new study)."""
    if not storage:
        return 0
    summaries = optuna.study.get_all_study_summaries(storage)
    return next((s.n_trials for s in summaries if s.study_name == study_name), 0)


def trial_value(job_return: JobReturn) -> float | None:
    """The job's return value as a number, None when it failed or returned none (or NaN)."""
    if job_return.status != JobStatus.COMPLETED:
        return None
    value = job_return.return_value
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


class OptunaSweeper(Sweeper):
    """Hydra sweeper on Optuna's ask-and-tell interface."""

    def __init__(
        self,
        sampler: Mapping[str, Any],
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Mapping[str, str] | None,
    ) -> None:
        self.sampler_config = OmegaConf.to_container(OmegaConf.create(dict(sampler)))
        self.direction = str(direction)
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Instantiate the configured launcher that will run the trials."""
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study holds `n_trials` finished ones; write the best to a YAML."""
        try:
            optuna = require("optuna", "search", "hparams_search=optuna")
            space, fixed = search_space(self.params, arguments)
        except ConfigError as error:
            log.error("%s", error)
            sys.exit(2)  # one line, not Hydra's traceback
        study = self._study(optuna)
        finished = sum(t.state.is_finished() for t in study.trials)
        if finished >= self.n_trials:
            log.info(
                "Study %s already holds %d finished trials (hydra.sweeper.n_trials=%d): nothing to "
                "run; raise hydra.sweeper.n_trials to continue it.",
                study.study_name,
                finished,
                self.n_trials,
            )
        while finished < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - finished))]
            batch = [(*fixed, *(f"{k}={v}" for k, v in t.params.items())) for t in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            failed = [
                r for t, r in zip(trials, returns, strict=True) if not self._tell(study, t, r)
            ]
            finished += len(trials)
            if failed and len(failed) / len(trials) > self.max_failure_rate:
                # Re-raises the first failed job's error, as a sweep without Optuna would.
                _ = failed[0].return_value
                raise RuntimeError(
                    f"{len(failed)} trial(s) returned no value for optimized_metric."
                )
        self._write_results(study)

    def _study(self, optuna: Any) -> Any:
        """Create or load the study, its sampler seeded past the trials it already holds."""
        sampler_config = dict(self.sampler_config)
        if sampler_config.get("seed") is not None:
            # A seeded sampler restarts its draws in every process: without the shift a continued
            # study would repeat the first session's random start-up trials.
            sampler_config["seed"] = int(sampler_config["seed"]) + stored_trials(
                optuna, self.storage, self.study_name
            )
        return optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=instantiate(sampler_config),
            direction=self.direction,
            load_if_exists=True,
        )

    @staticmethod
    def _tell(study: Any, trial: Any, job_return: JobReturn) -> bool:
        """Tell the study one job's result (failed without a value); True if it had a value."""
        from optuna.trial import TrialState

        output_dir = OmegaConf.select(job_return.hydra_cfg or {}, "hydra.runtime.output_dir")
        if output_dir:
            trial.set_user_attr("output_dir", str(output_dir))
        value = trial_value(job_return)
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
            return False
        study.tell(trial, value)
        return True

    def _write_results(self, study: Any) -> None:
        """<sweep dir>/optimization_results.yaml: the best trial's parameters and value."""
        if not any(t.value is not None for t in study.trials):
            log.warning("No trial of study %s finished with a value.", study.study_name)
            return
        best = study.best_trial
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "best_trial": best.number,
            "best_params": best.params,
            "best_value": best.value,
            "n_trials": len(study.trials),
        }
        path = Path(self.config.hydra.sweep.dir) / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), path)
        log.info("Best trial %d: %s = %s; %s", best.number, best.params, best.value, path)
