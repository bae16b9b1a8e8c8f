"""Surviving interruption: stop cleanly on Ctrl-C or SIGTERM, and resume as if never stopped."""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchmetrics import Metric

from crackdet.cli.run import rerun_command
from crackdet.seams import log_step_now

log = logging.getLogger(__name__)

#: Ctrl-C, and what `kill`, schedulers (SLURM) and container runtimes send before killing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving a checkpoint; the exit status is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def resume_command(ckpt_path: str | Path, run_dir: str | Path, script: str = "train.py") -> str:
    """The shell command that resumes a run: its overrides, the checkpoint, the same directory."""
    # The same directory: its best checkpoint stays the one to beat and its logs continue.
    return rerun_command(script, {"ckpt_path": str(ckpt_path), "hydra.run.dir": str(run_dir)})


class StoppedWithoutSaving(SystemExit):
    """A second signal: training stopped at once; the exit status is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _describe_checkpoints(folder: Path) -> tuple[str, Path | None]:
    """The checkpoints a run folder holds ("last.ckpt (epoch 1, step 4), ..."), and the newest."""
    found = []
    for path in sorted(folder.glob("*.ckpt")):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            found.append(
                (int(saved["global_step"]), path.name == "last.ckpt", path, saved["epoch"])
            )
        except Exception:  # a file being written by another process, or not a checkpoint
            continue
    if not found:
        return "no checkpoint", None
    found.sort(reverse=True)
    held = ", ".join(f"{path.name} (epoch {epoch}, step {step})" for step, _, path, epoch in found)
    return held, found[0][2]


class InterruptCheckpoint(L.Callback):
    """Ctrl-C or SIGTERM: finish the training step, save a checkpoint, print how to resume.

    The first signal only sets a flag. At the end of the training step in progress (the same
    step in every process) the run saves `<dirpath>/<filename>.ckpt`, logs the command that
    resumes it and exits with status 128 + signal (130 for Ctrl-C, 143 for SIGTERM). At the
    last step of an epoch it waits for the epoch's validation and stops after the next step,
    or when training ends. A second signal stops at once, without saving (also when it
    arrives while the checkpoint is being written: no partial file is left), and says which
    checkpoints the run folder holds and how to resume from the newest.
    """

    def __init__(
        self, dirpath: str | Path, filename: str = "interrupted", script: str = "train.py"
    ):
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.script = script
        self.received: int | None = None
        self._pid = os.getpid()

    @property
    def ckpt_path(self) -> Path:
        """Where the checkpoint of an interrupted run goes."""
        return self.dirpath / f"{self.filename}.ckpt"

    def _install(self) -> None:
        # Lightning installs its own SIGTERM handler when fitting starts (after `setup`); it would
        # stop in the middle of a validation epoch. It restores the earlier handlers on teardown.
        self._pid = os.getpid()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the training process decides
        if self.received is not None:
            raise StoppedWithoutSaving(signum)  # asked twice: stop now, without a checkpoint
        self.received = signum
        log.warning(
            "Received %s: training stops after the current step (after validation at the end "
            "of an epoch) and saves %s "
            "(send it again to stop at once, without saving).",
            signal.Signals(signum).name,
            self.ckpt_path,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Forget a signal of an earlier fit."""
        if stage == TrainerFn.FITTING:
            self.received = None

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGINT/SIGTERM before DataLoader workers fork, so they outlive a Ctrl-C."""
        if trainer.state.fn == TrainerFn.FITTING:
            self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGINT/SIGTERM (again) for the training loop."""
        self._install()

    def _stop_if_requested(self, trainer: L.Trainer, in_step: bool = False) -> None:
        requested = self.received is not None or trainer.received_sigterm
        # A collective: a signal seen by one process stops all of them at the same step.
        if trainer.strategy.reduce_boolean_decision(requested, all=False):
            if in_step:
                log_step_now(trainer)  # the step is done: its logged values are kept too
            raise TrainingInterrupted(self.received or signal.SIGTERM)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Stop here when a signal arrived during this step, unless it ends the epoch."""
        # The epoch's validation and end-of-epoch logging come after its last step, and a run
        # resumed from that step would skip them: stop after the next step (or at the end).
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._stop_if_requested(trainer, in_step=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A signal during the last validation still stops the run (before testing)."""
        self._stop_if_requested(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save the checkpoint (every process takes part) and say how to resume."""
        if isinstance(exception, TrainingInterrupted):
            self._save(trainer)
        elif isinstance(exception, StoppedWithoutSaving) and trainer.is_global_zero:
            self._report_unsaved(trainer, exception.signum, "before the checkpoint was saved")
        elif isinstance(exception, SIGTERMException) and exception.code is None:
            # Lightning's own SIGTERM stop (before training started) would exit with status 0.
            exception.code = 128 + signal.SIGTERM

    def _save(self, trainer: L.Trainer) -> None:
        """Save the interrupt checkpoint; a second signal meanwhile leaves no partial file."""
        try:
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        except StoppedWithoutSaving as again:
            if trainer.is_global_zero:
                self._report_unsaved(
                    trainer, again.signum, f"while {self.ckpt_path.name} was saved"
                )
            raise
        # Saved: a further signal changes nothing now, the run is about to exit.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if trainer.is_global_zero:
            log.warning(
                "Training interrupted at epoch %d, step %d; saved %s.\nResume it with:\n  %s",
                trainer.current_epoch,
                trainer.global_step,
                self.ckpt_path,
                resume_command(self.ckpt_path, trainer.default_root_dir, self.script),
            )

    def _report_unsaved(self, trainer: L.Trainer, signum: int, when: str) -> None:
        held, newest = _describe_checkpoints(self.dirpath)
        how = (
            f"Resume from the newest with:\n  "
            f"{resume_command(newest, trainer.default_root_dir, self.script)}"
            if newest
            else "Nothing to resume from: start the run again."
        )
        log.warning(
            "Received %s again %s: stopped at once at epoch %d, step %d; %s was NOT saved "
            "(no partial file is left). %s holds %s.\n%s",
            signal.Signals(signum).name,
            when,
            trainer.current_epoch,
            trainer.global_step,
            self.ckpt_path.name,
            self.dirpath,
            held,
            how,
        )


def _rng_state() -> dict[str, Any]:
    """The global random generators, as plain values and tensors (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _copy(value: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(value, list):
        return [v.detach().cpu().clone() for v in value]
    return value.detach().cpu().clone()


class ResumeState(L.Callback):
    """Puts into every checkpoint what Lightning leaves out, so a resumed run ends the same.

    Lightning checkpoints hold the weights, optimizer and loop counters. A run resumed
    mid-epoch also needs the random generators (augmentation, dropout) as they were, the running
    state of the model's torchmetrics metrics (this epoch's `train/acc` so far, `val/acc_best`)
    and the last logged values (the `fit` section of metrics.json). Metric states are summed over
    processes when saved and restored on rank zero only (right for sum, cat, max and min states).

    A checkpoint saved once an epoch's training steps are over (`last.ckpt`, at the end of the
    epoch) resumes at the start of the next epoch: the metrics updated by training steps are
    then saved empty, as that epoch starts them, not with the totals of the epoch just ended.
    """

    KEY = "crackdet_resume_state"

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._logged: dict[str, torch.Tensor] = {}
        #: Metrics that training steps update: their totals cover the epoch in progress.
        self._step_metrics: set[str] = set()
        self._counts: dict[str, int] = {}
        self._epoch_ended = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """An epoch in progress: its training metrics' running totals belong in checkpoints."""
        self._epoch_ended = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Note each metric's update count, to see which ones a training step updates."""
        self._counts = {name: m.update_count for name, m in _metrics(pl_module).items()}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Remember the metrics this training step updated."""
        for name, metric in _metrics(pl_module).items():
            if metric.update_count != self._counts.get(name, 0):
                self._step_metrics.add(name)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's steps are done: a checkpoint from now on resumes at the next epoch."""
        # Runs before ModelCheckpoint's hook (Lightning calls monitoring callbacks last).
        self._epoch_ended = True

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Add the random generators, metric states and logged values to `checkpoint`."""
        metrics: dict[str, dict[str, Any]] = {}
        for name, metric in _metrics(pl_module).items():
            if self._epoch_ended and name in self._step_metrics:
                continue  # the next epoch starts it afresh
            with metric.sync_context():  # a no-op in a single process
                states = {k: _copy(v) for k, v in metric.metric_state.items()}
            metrics[name] = {"states": states}
        checkpoint[self.KEY] = {
            "rng": _rng_state(),
            "metrics": metrics,
            "logged": {
                k: v.detach().cpu().clone()
                for k, v in trainer.callback_metrics.items()
                if isinstance(v, torch.Tensor)
            },
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the saved state for when training starts."""
        if trainer.state.fn == TrainerFn.FITTING and self.KEY in checkpoint:
            # (Evaluating a checkpoint is not resuming it.)
            self._to_restore = checkpoint[self.KEY]
            self._logged = self._to_restore["logged"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restore the rest right before the first batch, after the model's start-of-fit resets."""
        if self._to_restore is None:
            return
        state, self._to_restore = self._to_restore, None
        if trainer.is_global_zero:
            _set_metric_states(pl_module, state["metrics"])
        _set_rng_state(state["rng"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Logged values of the checkpoint that this fit did not log again (no step was left)."""
        for name, value in self._logged.items():
            trainer.callback_metrics.setdefault(name, value)
        self._logged = {}


def _metrics(module: L.LightningModule) -> dict[str, Metric]:
    return {name: m for name, m in module.named_modules() if isinstance(m, Metric)}


def _set_metric_states(module: L.LightningModule, saved: dict[str, dict[str, Any]]) -> None:
    metrics = _metrics(module)
    for name, entry in saved.items():
        metric = metrics.get(name)
        if metric is None:
            continue
        states = {}
        for key, value in entry["states"].items():
            if isinstance(getattr(metric, key), list):
                # Syncing processes concatenates a list state into one tensor.
                values = value if isinstance(value, list) else [value]
                states[key] = [v.to(metric.device) for v in values]
            else:
                states[key] = value.to(metric.device)
        metric.reset()
        # A metric's load_state_dict sets its states, whether or not they are persistent.
        metric.load_state_dict(states, strict=False)
