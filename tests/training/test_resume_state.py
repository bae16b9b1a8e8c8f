"""Checkpoints carry the metrics' running totals through public torchmetrics APIs only."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch
from lightning.pytorch.trainer.states import TrainerFn

from crackdet.models.lightning_model import CrackClassifier
from crackdet.training.callbacks.resume import ResumeState


def _trainer() -> SimpleNamespace:
    return SimpleNamespace(
        callback_metrics={}, state=SimpleNamespace(fn=TrainerFn.FITTING), is_global_zero=True
    )


def _update(model: CrackClassifier, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(8, generator=generator)
    labels = torch.randint(0, 2, (8,), generator=generator)
    model.metrics["train_"].update(probs, labels)
    model.val_acc_best.update(probs.mean())


def test_running_totals_survive_a_checkpoint_and_keep_counting() -> None:
    interrupted, resumed = CrackClassifier(weights=None), CrackClassifier(weights=None)
    _update(interrupted, 0)
    checkpoint: dict = {}
    ResumeState().on_save_checkpoint(_trainer(), interrupted, checkpoint)

    callback = ResumeState()
    callback.on_load_checkpoint(_trainer(), resumed, checkpoint)
    callback.on_train_start(_trainer(), resumed)
    for model in (interrupted, resumed):  # the rest of the epoch
        _update(model, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torchmetrics' "compute before update"
        expected = interrupted.metrics["train_"].compute()
        got = resumed.metrics["train_"].compute()
        assert resumed.val_acc_best.compute() == interrupted.val_acc_best.compute()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, msg=name)
