"""The private APIs of dependencies that crackdet cannot avoid, each guarded here and only here.

A seam checks, when it is used, that the private name still exists and is still used the way
crackdet relies on; otherwise it stops the run with a `SeamError` naming the installed version
and the versions tested. pyproject.toml caps each such dependency at the minor versions tested,
and tests/test_seams.py fails when an upgrade changes one. To add a seam: a function or class
below that calls `private_name` (and `require_lookup` when upstream must still look the name up),
the package in `TESTED`, and a test.
"""

from __future__ import annotations

import atexit
import csv
from collections.abc import Callable, Sequence
from importlib.metadata import version
from types import FunctionType, ModuleType
from typing import Any

from crackdet.errors import CrackdetError

#: Dependencies with a seam below -> the version range tested (also the cap in pyproject.toml).
TESTED = {"lightning": ">=2.4,<2.7"}


class SeamError(CrackdetError):
    """A dependency changed a private API that crackdet relies on."""


def _changed(package: str, what: str) -> SeamError:
    return SeamError(
        f"{package} {version(package)} changed {what}, which crackdet relies on (tested with "
        f"{package}{TESTED[package]}). Install a tested version: "
        f"pip install '{package}{TESTED[package]}'."
    )


def private_name(owner: ModuleType | type, name: str, package: str) -> Any:
    """`owner.name`, or a SeamError naming the installed `package` version when it is gone."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise _changed(package, f"{owner.__name__}.{name} (it is gone)") from None


def require_lookup(function: Callable[..., Any], name: str, package: str) -> None:
    """Fail unless `function`'s code still looks `name` up (so replacing or overriding it works)."""
    code = function.__code__ if isinstance(function, FunctionType) else None
    if code is None or name not in code.co_names:
        raise _changed(package, f"{function.__qualname__} (it no longer uses {name})")


# --- lightning: the command that starts DDP child processes under Hydra -----------------------


def _launcher_modules() -> tuple[ModuleType, ...]:
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    return fabric_launcher, pytorch_launcher


ChildCommand = Callable[[int], tuple[Sequence[str], str]]


def replace_ddp_child_command(command: ChildCommand) -> Callable[[], None]:
    """Make Lightning's `ddp` launcher start child `local_rank` with `command(local_rank)`.

    Lightning builds the command of a DDP child under Hydra in the private
    `subprocess_script._hydra_subprocess_cmd` and has no public hook for it. Returns a function
    that puts Lightning's own command back.
    """
    modules = _launcher_modules()
    saved = []
    for module in modules:
        saved.append(private_name(module, "_hydra_subprocess_cmd", "lightning"))
        launcher = private_name(module, "_SubprocessScriptLauncher", "lightning")
        require_lookup(launcher._call_children_scripts, "_hydra_subprocess_cmd", "lightning")
    for module in modules:
        module._hydra_subprocess_cmd = command

    def restore() -> None:
        for module, original in zip(modules, saved, strict=True):
            module._hydra_subprocess_cmd = original

    return restore


# --- lightning: a CSV logger that continues an existing metrics.csv ---------------------------


def continuing_csv_writer() -> type:
    """Lightning's CSV ExperimentWriter, except that it appends to an existing metrics.csv.

    Lightning's writer deletes metrics.csv in its private `_check_log_dir_exists`, called from
    `__init__`; there is no public switch, so the subclass overrides that method.
    """
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    private_name(_ExperimentWriter, "_check_log_dir_exists", "lightning")
    require_lookup(_ExperimentWriter.__init__, "_check_log_dir_exists", "lightning")

    class ContinuingExperimentWriter(ExperimentWriter):
        """Keeps an existing metrics.csv and its columns; new rows are appended."""

        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                    self.metrics_keys = next(csv.reader(handle), [])

    return ContinuingExperimentWriter


# --- lightning: handing a training step's logged values to the loggers from its end hook -------


def log_step_now(trainer: Any) -> None:
    """Send the training step's logged values to the loggers now, as Lightning does after it.

    Lightning writes a step's values in the private `_LoggerConnector.update_train_step_metrics`
    after every `on_train_batch_end` hook has returned; a run stopped from such a hook
    (InterruptCheckpoint) would lose that step's row, and there is no public call for it.
    """
    from lightning.pytorch.loops import training_epoch_loop
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    connector_class = private_name(logger_connector, "_LoggerConnector", "lightning")
    epoch_loop = private_name(training_epoch_loop, "_TrainingEpochLoop", "lightning")
    require_lookup(epoch_loop.advance, "_logger_connector", "lightning")
    for name in ("on_batch_end", "update_train_step_metrics"):
        private_name(connector_class, name, "lightning")
        require_lookup(epoch_loop.advance, name, "lightning")
    trainer._logger_connector.on_batch_end()
    trainer._logger_connector.update_train_step_metrics()


# --- torch: whether the CPU kernels have native bfloat16 -----------------------------------------


def torch_cpu_has_native_bf16() -> bool:
    """Whether PyTorch's CPU kernels (oneDNN) have native bfloat16 support on this CPU.

    PyTorch has no public query for this; `torch.ops.mkldnn._is_mkldnn_bf16_supported` is what
    its own tests use. A missing op answers False, so bf16 is refused by name (never emulated
    slowly); tests/test_seams.py fails when the op is gone.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else False


# --- CPython: the interpreter's exit handlers, run before leaving without its teardown -----------


def run_exit_handlers() -> bool:
    """Run every `atexit` handler now, as the interpreter does at exit; False where it cannot.

    `atexit._run_exitfuncs` is the hook CPython calls at shutdown, and there is no public way to
    run the handlers early. crackdet calls it before `os._exit` (crackdet.cli.run.run_entry_point)
    so the exit handlers still flush and clean up, while the teardown of torch, Lightning and the
    thousands of modules they load, which saves nothing, is skipped. Without the hook the entry
    point exits the normal way (tests/test_seams.py fails when it is gone).
    """
    run = getattr(atexit, "_run_exitfuncs", None)
    if run is None:
        return False
    run()
    return True
