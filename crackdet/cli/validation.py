"""Start-up checks of a config: every mistake is reported at once, before anything is written.

`SETTING_RULES` is one table of what each numeric or enum setting of a training config must be;
`check_settings(cfg)` applies it. `validate_train_config(cfg)` adds the training checks
that look at files (data folder, weights, checkpoint, run folders) and the settings that depend on
each other, and raises one ConfigError listing every problem (a single problem keeps its own
type: DataError, WeightsError). `OutputDirCheck`, a Hydra callback, runs them before Hydra
creates the run folder or writes `.hydra/` and the log; `run_main` turns a later start-up error
into exit status 2 and leaves the run folder as it was (crackdet.cli.run_dir).

Misspelt keys and unknown config group options never get this far: Hydra's struct mode rejects
them while composing the config, naming the key or listing the available options.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import InterpolationResolutionError

from crackdet.cli.run_dir import record_start
from crackdet.data.scan import check_data_dir
from crackdet.data.splits import SPLIT_MODES, check_fractions
from crackdet.distributed import process_rank
from crackdet.errors import ConfigError, CrackdetError, write_failure_reason
from crackdet.models.options import BN_MODES, DEFAULT_BACKBONE, RUNTIMES, TRAINABLE
from crackdet.models.options import PRECISIONS as BACKBONE_PRECISIONS

log = logging.getLogger("crackdet")


def _is_number(value: Any, integer: bool = False) -> bool:
    kinds = int if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """What a setting must be: a test of the value and the words that say what it accepts."""

    must_be: str
    accepts: Callable[[Any], bool]

    def __or__(self, other: Rule) -> Rule:
        return Rule(
            f"{self.must_be}, or {other.must_be}", lambda v: self.accepts(v) or other.accepts(v)
        )


class DeferredRule(Rule):
    """A rule made when it is first used, by `make`, which may import what it needs.

    Every entry point's Hydra callback imports this module; Lightning's accelerator names are
    looked up only when a config is checked, so predict.py never imports Lightning (seconds).
    """

    def __init__(self, make: Callable[[], Rule]):
        object.__setattr__(self, "_make", cache(make))

    @property
    def must_be(self) -> str:
        """What the rule accepts, in words."""
        return self._make().must_be

    def accepts(self, value: Any) -> bool:
        """Whether `value` passes the rule."""
        return self._make().accepts(value)

    def __or__(self, other: Rule) -> Rule:
        return DeferredRule(lambda: self._make() | other)


def _accelerator_rule() -> Rule:
    """`trainer.accelerator`: auto, gpu, or an accelerator Lightning has registered."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return one_of("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def integer(minimum: int | None = None) -> Rule:
    """A whole number (1.5 and "abc" are refused, not truncated), at least `minimum`."""
    words = "an integer" if minimum is None else f"an integer, {minimum} or more"
    return Rule(words, lambda v: _is_number(v, integer=True) and (minimum is None or v >= minimum))


def number(
    low: float, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Rule:
    """A number in the interval from `low` to `high` (open ends excluded)."""
    if high is None:
        words = f"a number {'above' if low_open else 'of at least'} {low}"
    else:
        words = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def accepts(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return Rule(words, accepts)


def one_of(*values: Any) -> Rule:
    """One of the listed values (compared with their types: 2 is not "2")."""
    allowed = ", ".join("null" if v is None else str(v) for v in values)

    def accepts(v: Any) -> bool:
        return any(v == a and type(v) is type(a) for a in values)

    return Rule(f"one of: {allowed}", accepts)


NULL = one_of(None)
BOOLEAN = one_of(True, False)
#: Lightning's precision settings (the short legacy spellings 16, 32, "bf16"... are accepted too).
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
LEGACY_PRECISIONS = (16, 32, 64, "16", "32", "64", "bf16")
_BATCH_LIMIT = integer(0) | number(0.0, 1.0) | NULL

#: What every numeric or enum setting of train.py must be. A key absent from the config is not
#: checked. (eval.py gives some of these keys other meanings, e.g. null = "as the checkpoint
#: recorded": EVAL_SETTING_RULES; predict.py checks its settings where they are read.)
SETTING_RULES: dict[str, Rule] = {
    "seed": integer() | NULL,
    "data.image_size": integer(32),
    "data.batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.train_fraction": number(0, 1, low_open=True, high_open=True),
    "data.split": one_of(*SPLIT_MODES),
    "data.split_seed": integer() | NULL,
    "data.on_bad_image": one_of("error", "skip"),
    "data.feature_cache": one_of("auto", "off", "rebuild"),
    "data.pin_memory": BOOLEAN,
    "data.synthetic.n_per_class": integer(1),
    "data.synthetic.size": integer(8),
    "data.synthetic.seed": integer(),
    "model.optimizer.lr": number(0, low_open=True),
    "model.optimizer.weight_decay": number(0),
    "model.dropout": number(0, 1, high_open=True),
    "model.bn_mode": one_of(*BN_MODES),
    "model.num_classes": Rule("2: the labels are crack (1) and no crack (0)", lambda v: v == 2),
    "model.trainable": one_of(*TRAINABLE),
    "model.backbone_lr": number(0, low_open=True) | NULL,
    "model.channels_last": BOOLEAN,
    "model.backbone_runtime": one_of(*RUNTIMES),
    "model.backbone_precision": one_of(*BACKBONE_PRECISIONS),
    "trainer.precision": Rule(
        one_of(*PRECISIONS).must_be, one_of(*PRECISIONS, *LEGACY_PRECISIONS).accepts
    ),
    "trainer.accelerator": DeferredRule(_accelerator_rule),
    "trainer.devices": integer(1)
    | Rule("-1 (all)", lambda v: v == -1)
    | one_of("auto")
    | Rule("a list of device indices", lambda v: OmegaConf.is_list(v) or isinstance(v, list)),
    "trainer.max_epochs": integer(1) | Rule("-1 with trainer.max_steps", lambda v: v == -1) | NULL,
    "trainer.min_epochs": integer(0) | NULL,
    "trainer.max_steps": integer(1) | Rule("-1 (no limit)", lambda v: v == -1),
    "trainer.log_every_n_steps": integer(1) | NULL,
    "trainer.check_val_every_n_epoch": integer(1) | NULL,
    "trainer.num_sanity_val_steps": integer(0) | Rule("-1 (all)", lambda v: v == -1),
    "trainer.limit_train_batches": _BATCH_LIMIT,
    "trainer.limit_val_batches": _BATCH_LIMIT,
    "trainer.limit_test_batches": _BATCH_LIMIT,
    "trainer.deterministic": one_of(True, False, "warn", None),
    "callbacks.operating_point.target_recall": number(0, 1, low_open=True),
}

#: The same for eval.py, where a null data setting means "as the checkpoint recorded".
EVAL_SETTING_RULES: dict[str, Rule] = {
    **{key: SETTING_RULES[key] | NULL for key in ("data.image_size", "data.batch_size")},
    "data.train_fraction": SETTING_RULES["data.train_fraction"] | NULL,
    **{
        key: SETTING_RULES[key]
        for key in (
            "data.num_workers",
            "data.split_seed",
            "data.on_bad_image",
            "trainer.precision",
            "trainer.accelerator",
            "trainer.devices",
        )
    },
    "data.split": one_of("test", "val", "all", None),
    "eval.target_recall": SETTING_RULES["callbacks.operating_point.target_recall"],
    "eval.threshold": number(0, 1) | NULL,
    "eval.temperature_scaling": BOOLEAN,
    "eval.calibration_bins": integer(1),
    "eval.on_mismatch": one_of("error", "skip"),
    "eval.backbone_runtime": one_of(*RUNTIMES, None),
    "eval.backbone_precision": one_of(*BACKBONE_PRECISIONS, None),
}

_ABSENT = object()


def check_settings(cfg: DictConfig, rules: dict[str, Rule] = SETTING_RULES) -> list[str]:
    """Every setting of `cfg` that breaks its rule in `rules`, as `key=value must be ...`."""
    problems = []
    for key, rule in rules.items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT)
        except InterpolationResolutionError:
            continue  # read from a setting with its own check (data.image_size: model.backbone)
        if value is not _ABSENT and not rule.accepts(value):
            problems.append(f"{key}={value} must be {rule.must_be}.")
    return problems


def check_writable_dir(path: str | Path, setting: str, fix: str) -> Path:
    """`path` is a writable folder or can be created as one; nothing is left behind."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(existing))
        # Making (and removing) a folder there is what creating the run's folders will need.
        with tempfile.TemporaryDirectory(dir=existing, prefix=".crackdet-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{setting}={path} cannot be written: {write_failure_reason(exc)}. Fix: {fix}"
        ) from exc
    return path


def _run_dir_fix(cfg: DictConfig) -> str:
    log_dir = OmegaConf.select(cfg, "paths.log_dir", default="outputs")
    return (
        f"runs are written below paths.log_dir={log_dir} unless hydra.run.dir is set; point "
        "paths.log_dir (or hydra.run.dir) at a writable folder with free space, e.g. "
        "paths.log_dir=$HOME/crackdet-outputs."
    )


def _check_outputs(cfg: DictConfig) -> None:
    check_writable_dir(cfg.paths.output_dir, "hydra.run.dir", _run_dir_fix(cfg))
    cache_dir = cfg.paths.get("cache_dir")
    if cache_dir:
        check_writable_dir(
            cache_dir,
            "paths.cache_dir",
            "point paths.cache_dir at a writable folder (it holds scan results, synthetic "
            "images and cached features).",
        )


def _check_data(data: DictConfig) -> None:
    if not data.get("synthetic"):
        check_data_dir(data.data_dir, data.classes)


def _check_fractions(data: DictConfig) -> None:
    check_fractions(data.get("fractions", [0.7, 0.15, 0.15]))


def _check_normalization(data: DictConfig) -> None:
    for key in ("mean", "std"):
        values = data.get(key)
        if not (isinstance(values, Sequence) and len(values) == 3 and all(map(_is_number, values))):
            raise ConfigError(f"data.{key}={values} must be three numbers, one per RGB channel.")
    if not all(s > 0 for s in data.std):
        raise ConfigError(
            f"data.std={data.std} must be above 0 in every channel (images are divided by it)."
        )


def _check_epochs(trainer: DictConfig) -> None:
    max_epochs, min_epochs = trainer.get("max_epochs"), trainer.get("min_epochs")
    max_steps = trainer.get("max_steps")
    if max_epochs in (None, -1) and not (_is_number(max_steps, integer=True) and max_steps > 0):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} needs trainer.max_steps > 0 (without a step "
            "budget, the epochs are the budget), e.g. trainer.max_epochs=10."
        )
    both_set = _is_number(min_epochs, integer=True) and _is_number(max_epochs, integer=True)
    if both_set and max_epochs >= 1 and min_epochs > max_epochs:
        raise ConfigError(
            f"trainer.min_epochs={min_epochs} must not exceed trainer.max_epochs={max_epochs}."
        )


def check_resume_checkpoint(ckpt_path: str) -> None:
    """`ckpt_path` is a readable Lightning training checkpoint (read lazily, nothing is loaded)."""
    # The one checkpoint reader of every entry point says what a bad file is; imported here so
    # that `--help` does not load torch.
    from crackdet.models.checkpoint import read_checkpoint

    path = Path(str(ckpt_path)).expanduser()
    fix = (
        "Give a checkpoint of a training run, e.g. "
        "ckpt_path=outputs/train/<run>/checkpoints/last.ckpt, or ckpt_path=null."
    )
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} is not a file. {fix}")
    checkpoint = read_checkpoint(path)
    if "loops" not in checkpoint:
        raise ConfigError(
            f"ckpt_path={ckpt_path} is not a training checkpoint (it has no state_dict and "
            f"loop state to resume; a plain state dict belongs in model.weights). {fix}"
        )


def _check_run(cfg: DictConfig) -> None:
    ckpt_path = cfg.get("ckpt_path")
    if not cfg.get("train", True) and cfg.get("test", True) and ckpt_path is None:
        raise ConfigError(
            "train=false tests a trained model, but ckpt_path is not set: give "
            "ckpt_path=outputs/train/<run>/checkpoints/best.ckpt (or evaluate it with eval.py)."
        )
    if cfg.get("train", True) and OmegaConf.select(cfg, "data.split") == "all":
        raise ConfigError(
            "data.split=all puts every image in the test split, leaving nothing to train on: "
            "use data.split=seed or stratified for training, and data.split=all with eval.py."
        )


def _check_target_recall(cfg: DictConfig) -> None:
    from crackdet.evaluation.threshold import check_target_recall

    recall = OmegaConf.select(cfg, "callbacks.operating_point.target_recall")
    if _is_number(recall):
        check_target_recall(recall, "callbacks.operating_point.target_recall")


def start_problems(cfg: DictConfig) -> list[CrackdetError]:
    """Every problem of a training config found before any work: values, files and folders."""
    problems: list[CrackdetError] = [ConfigError(p) for p in check_settings(cfg)]
    bad = {p.args[0].split("=", 1)[0] for p in problems}
    from crackdet.models.backbone import resolve_weights  # torchvision: only once a job starts

    try:
        # First: the data's input size and mean/std are read from the backbone's weights.
        resolve_weights(cfg.model.get("weights"), cfg.model.get("backbone", DEFAULT_BACKBONE))
    except CrackdetError as problem:
        problems.append(problem)
        bad.add("model.backbone")
    checks: list[tuple[str | None, Callable[[], Any]]] = [
        (None, lambda: _check_outputs(cfg)),
        (None, lambda: _check_run(cfg)),
        (None, lambda: _check_data(cfg.data)),
        (None, lambda: _check_fractions(cfg.data)),
        ("model.backbone", lambda: _check_normalization(cfg.data)),
        ("trainer.max_epochs", lambda: _check_epochs(cfg.trainer)),
        ("callbacks.operating_point.target_recall", lambda: _check_target_recall(cfg)),
    ]
    if cfg.get("ckpt_path") is not None:
        checks.append((None, lambda: check_resume_checkpoint(cfg.ckpt_path)))
    for depends_on, check in checks:
        if depends_on in bad:
            continue  # already reported: its value is wrong, the check would only repeat it
        try:
            check()
        except CrackdetError as problem:
            problems.append(problem)
    return problems


def raise_problems(problems: Sequence[CrackdetError]) -> None:
    """Raise the one problem as it is, or one ConfigError listing them all."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{len(problems)} problems stop this run before it starts:\n{listed}")


def validate_train_config(cfg: DictConfig) -> None:
    """Check a training config before any work starts; raise naming every problem found."""
    raise_problems(start_problems(cfg))


def validate_eval_config(cfg: DictConfig) -> None:
    """Check an evaluation config's settings before any work; raise naming every problem."""
    raise_problems([ConfigError(p) for p in check_settings(cfg, EVAL_SETTING_RULES)])


#: Each entry point's settings table (by task_name), checked for every job of a multirun.
TASK_SETTING_RULES: dict[str, dict[str, Rule]] = {
    "train": SETTING_RULES,
    "eval": EVAL_SETTING_RULES,
}


#: The start-up checks of each entry point (by task_name) that the Hydra callback runs.
START_CHECKS: dict[str, Callable[[DictConfig], None]] = {
    "train": validate_train_config,
    "eval": validate_eval_config,
}


def _stop_on_error(check: Callable[[], Any]) -> None:
    """Run a check in a Hydra callback: a problem ends the process with status 2.

    Hydra turns exceptions of callbacks into warnings and carries on, so the callback exits.
    """
    try:
        check()
    except CrackdetError as error:
        log.error("%s", error)
        sys.exit(2)


def _with_run_dir(config: DictConfig) -> DictConfig:
    """`config` with hydra.runtime.output_dir set to the run folder, as Hydra sets it next.

    Also makes `${hydra:...}` resolvable, which Hydra only does once the job starts.
    """
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(str(config.hydra.run.dir))
    HydraConfig.instance().set_config(config)
    return config


def reused_sweep_problem(sweep_dir: str | Path) -> ConfigError | None:
    """A sweep folder that already holds a sweep is refused: its jobs would be overwritten."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir() or not any(sweep_dir.iterdir()):
        return None
    return ConfigError(
        f"hydra.sweep.dir={sweep_dir} already holds a sweep; a new sweep would reuse its job "
        "numbers and overwrite its jobs. Leave hydra.sweep.dir unset for a fresh folder, or "
        "give a new one, e.g. hydra.sweep.dir=" + f"{sweep_dir}_2. (An Optuna study with "
        "hydra.sweeper.storage continues in a new folder.)"
    )


class OutputDirCheck(Callback):
    """Hydra callback: the start-up checks, run before Hydra creates or writes any folder."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check hydra.run.dir and the config; note the run folder's state for a failed start."""
        _stop_on_error(
            lambda: check_writable_dir(config.hydra.run.dir, "hydra.run.dir", _run_dir_fix(config))
        )
        if process_rank() == 0:  # DDP children work in their parent's folder
            record_start(config.hydra.run.dir)
        check = START_CHECKS.get(str(config.get("task_name")))
        if check is not None:
            _stop_on_error(lambda: check(_with_run_dir(config)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check hydra.sweep.dir (writable, not holding an earlier sweep) and the settings."""
        sweep_dir = config.hydra.sweep.dir
        _stop_on_error(
            lambda: check_writable_dir(sweep_dir, "hydra.sweep.dir", _run_dir_fix(config))
        )
        rules = TASK_SETTING_RULES.get(str(config.get("task_name")))
        problems = [ConfigError(p) for p in check_settings(config, rules)] if rules else []
        reused = reused_sweep_problem(sweep_dir)
        _stop_on_error(lambda: raise_problems([*problems, *([reused] if reused else [])]))
