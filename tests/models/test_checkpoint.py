"""Every entry point refuses a damaged or foreign checkpoint by name, with the fix."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from crackdet.deploy.inference import load_checkpoint, load_network_checkpoint
from crackdet.errors import CheckpointError
from crackdet.models.checkpoint import (
    DATA_SETTINGS_KEY,
    MODEL_SETTINGS_KEY,
    check_resumable,
    load_classifier,
    load_network,
)
from crackdet.models.lightning_model import CrackClassifier
from crackdet.models.settings import build_classifier
from crackdet.models.torch_model import CrackNet
from tests.conftest import TINY, run_entries, selected_params

#: What each kind of bad file is called in the error message.
BAD_KINDS = {
    "truncated": "is truncated or damaged",
    "text": "is a text file",
    "empty": "is empty (0 bytes)",
    "state_dict": "holds only weights (a plain state dict",
    "other_model": "was written for another model",
    "other_head": "was written for another model",
}


def make_bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    """A file of `kind` made from the training checkpoint `good`."""
    path = folder / f"{kind}.ckpt"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("epoch 3: val/acc 0.98\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        checkpoint = torch.load(good, map_location="cpu", weights_only=True)
        if kind == "state_dict":
            checkpoint = checkpoint["state_dict"]
        elif kind == "other_model":  # a Lightning checkpoint of another project's network
            other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 5))
            checkpoint["state_dict"] = {f"model.{k}": v for k, v in other.state_dict().items()}
            checkpoint["hyper_parameters"] = {"hidden": 8}
        else:  # crackdet's network with a 3-class head under a 2-class model's settings
            weights = checkpoint["state_dict"]
            for key in [k for k in weights if k.startswith("net.head.")]:
                weights[key] = torch.zeros(3, *weights[key].shape[1:])
        torch.save(checkpoint, path)
    return path


@pytest.fixture
def good_ckpt(trained_run: Path) -> Path:
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_loader_names_the_file_and_what_is_wrong(kind: str, good_ckpt: Path, tmp_path: Path):
    bad = make_bad_checkpoint(kind, good_ckpt, tmp_path)
    messages = []
    # eval; export; predict (the plain network, refused in the same words)
    for load in (load_classifier, load_checkpoint, load_network, load_network_checkpoint):
        with pytest.raises(CheckpointError) as refused:
            load(bad)
        message = str(refused.value)
        assert f"ckpt_path={bad}" in message and BAD_KINDS[kind] in message
        assert "Fix:" in message
        messages.append(message)
    assert len(set(messages)) == 1


#: Recorded settings that build no classifier, or one the weights do not fit.
BAD_SETTINGS = [
    {"backbone_runtime": "warp"},
    {"backbone_precision": "fp8"},
    {"backbone": "resnet5"},
    {"dropout": 1.0},
    {"num_classes": 3},
    {"trainable": "some"},
    {"backbone_lr": 0},
]


def _with_settings(good: Path, folder: Path, **settings) -> Path:
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"].update(settings)
    path = folder / "settings.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "settings", BAD_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
)
def test_bad_recorded_settings_are_refused_alike(settings: dict, good_ckpt: Path, tmp_path: Path):
    bad = _with_settings(good_ckpt, tmp_path, **settings)
    with pytest.raises(CheckpointError) as lightning:
        load_classifier(bad)
    with pytest.raises(CheckpointError) as plain:
        load_network(bad)
    assert str(plain.value) == str(lightning.value)
    assert "was written for another model" in str(plain.value)


def _old_layout(good: Path, folder: Path) -> Path:
    """The checkpoint as written before the weights moved under `net.` and model.trainable."""
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    del hparams["trainable"], hparams["backbone"], hparams["backbone_precision"]
    hparams["freeze_backbone"] = True
    hparams["a_setting_of_another_version"] = 1  # dropped, as Lightning drops it
    checkpoint["state_dict"] = {
        k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()
    }
    path = folder / "old.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("layout", ["current", "old"])
def test_the_plain_network_is_the_classifiers_network(layout: str, good_ckpt: Path, tmp_path):
    ckpt = good_ckpt if layout == "current" else _old_layout(good_ckpt, tmp_path)
    classifier = load_classifier(ckpt)
    net, settings = load_network(ckpt)
    assert type(net) is CrackNet and not net.training
    assert settings == dict(classifier.hparams)
    expected = classifier.net.state_dict()
    assert list(net.state_dict()) == list(expected)
    for key, value in net.state_dict().items():
        assert torch.equal(value, expected[key]) and value.stride() == expected[key].stride(), key
    torch.manual_seed(0)
    images = torch.randn(4, 3, 48, 48)
    with torch.inference_mode():
        assert torch.equal(net(images), classifier(images))
        assert torch.equal(net.features(images), classifier.net.features(images))
    for mode in (True, False):  # the frozen backbone stays in eval mode alike
        net.train(mode), classifier.train(mode)
        assert [m.training for m in net.modules()] == [m.training for m in classifier.net.modules()]


def test_both_loaders_read_the_same_preprocessing(good_ckpt: Path):
    lightning, plain = load_checkpoint(good_ckpt), load_network_checkpoint(good_ckpt)
    assert type(plain.model) is CrackNet and isinstance(lightning.model, CrackClassifier)
    fields = [f.name for f in dataclasses.fields(plain) if f.name != "model"]
    assert {f: getattr(plain, f) for f in fields} == {f: getattr(lightning, f) for f in fields}


def test_the_network_is_rebuilt_from_exactly_the_classifiers_arguments():
    # Lightning passes the recorded settings CrackClassifier takes; load_network those of
    # build_classifier: the two must not drift apart.
    classifier = list(inspect.signature(CrackClassifier.__init__).parameters.values())[1:]
    assert classifier == list(inspect.signature(build_classifier).parameters.values())


def test_the_settings_keys_are_lightnings():
    assert MODEL_SETTINGS_KEY == L.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY
    assert DATA_SETTINGS_KEY == L.LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_training_refuses_to_resume_from_it_before_starting(
    kind: str, good_ckpt: Path, tmp_path: Path
):
    bad = make_bad_checkpoint(kind, good_ckpt, tmp_path)
    with pytest.raises(CheckpointError, match=re.escape(BAD_KINDS[kind])):
        check_resumable(bad, CrackClassifier(weights=None), resume=True)


def test_a_weights_only_checkpoint_can_be_tested_but_not_resumed(good_ckpt: Path, tmp_path: Path):
    checkpoint = torch.load(good_ckpt, map_location="cpu", weights_only=True)
    weights_only = tmp_path / "weights_only.ckpt"
    torch.save(
        {k: v for k, v in checkpoint.items() if k not in ("loops", "optimizer_states")},
        weights_only,
    )
    model = CrackClassifier(weights=None)
    check_resumable(weights_only, model, resume=False)
    with pytest.raises(CheckpointError, match="training cannot continue from it"):
        check_resumable(weights_only, model, resume=True)
    assert isinstance(load_classifier(weights_only), CrackClassifier)


ENTRY_TEST = "test_entry_points_exit_2_without_a_traceback"


@pytest.fixture(scope="module")
def entry_point_runs(
    request: pytest.FixtureRequest, trained_run: Path, tmp_path_factory, synthetic_cache: Path
) -> dict[tuple[str, str], tuple[Path, subprocess.CompletedProcess]]:
    """The bad file and the finished process of every selected case of the test below.

    The cases are independent start-ups that fail, so they run side by side, not one by one.
    """
    good = trained_run / "checkpoints" / "last.ckpt"
    bad, runs = {}, {}
    for params in selected_params(request, ENTRY_TEST):
        case = params["script"], params["kind"]
        folder = tmp_path_factory.mktemp(f"{case[1]}-{case[0]}")
        bad[case] = make_bad_checkpoint(case[1], good, folder)
        args = [f"ckpt_path={bad[case]}", f"hydra.run.dir={folder / 'run'}"]
        if case[0] == "train.py":
            args += [*TINY, f"paths.cache_dir={synthetic_cache}"]
        runs[case] = (case[0], args)
    return {case: (bad[case], result) for case, result in run_entries(runs).items()}


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "state_dict", "other_model"])
def test_entry_points_exit_2_without_a_traceback(script: str, kind: str, entry_point_runs):
    bad, result = entry_point_runs[script, kind]
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"ckpt_path={bad}" in output and BAD_KINDS[kind] in output
    assert "Traceback" not in output
