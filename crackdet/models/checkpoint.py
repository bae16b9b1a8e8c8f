"""Reading a training checkpoint: any other file is refused with what it is and what to give."""

from __future__ import annotations

import inspect
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from crackdet.errors import CheckpointError, ConfigError
from crackdet.models.settings import build_classifier, upgrade_weight_names
from crackdet.models.torch_model import CrackNet

if TYPE_CHECKING:
    from crackdet.models.lightning_model import CrackClassifier

_FIX = (
    "Fix: give a checkpoint written by `python train.py`, e.g. "
    "ckpt_path=outputs/train/<run>/checkpoints/best.ckpt (last.ckpt to resume training)."
)
#: Lightning's keys that let training continue from a checkpoint (weights-only ones lack them).
_RESUME_KEYS = ("loops", "optimizer_states")
#: Where Lightning records the model's and the data module's settings in a checkpoint
#: (`CHECKPOINT_HYPER_PARAMS_KEY` of LightningModule and LightningDataModule).
MODEL_SETTINGS_KEY = "hyper_parameters"
DATA_SETTINGS_KEY = "datamodule_hyper_parameters"


def checkpoint_file(ckpt_path: str | Path | None, setting: str = "ckpt_path") -> Path:
    """The checkpoint's path, refused when unset or missing."""
    if not ckpt_path:
        raise ConfigError(
            f"{setting} is not set. Pass a training checkpoint, e.g. "
            f"{setting}=outputs/train/<run>/checkpoints/best.ckpt."
        )
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{setting}={ckpt_path} does not exist (no such file). Training writes checkpoints to "
            "outputs/train/<run>/checkpoints/{best,last}.ckpt."
        )
    return path


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def _why_unreadable(path: Path, exc: Exception) -> str:
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK"):  # torch.save writes a zip archive
        return (
            f"is truncated or damaged ({path.stat().st_size} bytes; the save or copy that made "
            "it did not finish)"
        )
    if _is_text(head):
        return "is a text file, not a PyTorch checkpoint"
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
        return (
            "holds Python objects, not only weights, so it is not loaded (loading could run code)"
        )
    return f"is not a PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"


def read_checkpoint(ckpt_path: str | Path | None, setting: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning training checkpoint's contents, on the CPU; anything else is a CheckpointError."""
    path = checkpoint_file(ckpt_path, setting)
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{setting}={path} is empty (0 bytes): the save or copy that made it did not "
            f"finish. {_FIX}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"{setting}={path} {_why_unreadable(path, exc)}. {_FIX}") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        if isinstance(checkpoint, dict) and all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()
        ):
            what = f"only weights (a plain state dict of {len(checkpoint)} tensors)"
        else:
            what = f"a {type(checkpoint).__name__} without a state_dict"
        raise CheckpointError(
            f"{setting}={path} holds {what}: it is not a training checkpoint, it lacks the "
            f"model settings and preprocessing crackdet needs. {_FIX}"
        )
    return checkpoint


def _another_model(setting: str, path: Path, exc: Exception) -> CheckpointError:
    """The refusal of a checkpoint whose settings or shapes do not build a CrackClassifier."""
    reason = str(exc).strip().splitlines()[-1].strip()
    return CheckpointError(
        f"{setting}={path} was written for another model: it does not build a "
        f"CrackClassifier ({type(exc).__name__}: {reason}). {_FIX}"
    )


def check_weights_fit(
    checkpoint: dict[str, Any],
    model: nn.Module,
    path: str | Path,
    setting: str = "ckpt_path",
    name: str | None = None,
) -> None:
    """Refuse a checkpoint whose weights do not fit `model` (another architecture).

    A model with Lightning's `on_load_checkpoint` hook first adapts the weights as loading does
    (CrackClassifier: older key names); `name` is the model's name in the message.
    """
    saved = {"state_dict": dict(checkpoint["state_dict"])}
    adapt = getattr(model, "on_load_checkpoint", None)
    if adapt is not None:
        adapt(saved)
    weights, expected = saved["state_dict"], model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k} is {list(weights[k].shape)} there, {list(v.shape)} here"
        for k, v in expected.items()
        if k in weights and isinstance(weights[k], torch.Tensor) and weights[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; ... ({len(problems)} in all)" * (len(problems) > 3))
        raise CheckpointError(
            f"{setting}={path} was written for another model: its weights do not fit "
            f"{name or type(model).__name__} with these settings ({shown}). Fix: give a checkpoint of "
            "this model, or the model settings (model.*) it was trained with."
        )


def load_classifier(ckpt_path: str | Path | None, setting: str = "ckpt_path") -> CrackClassifier:
    """The classifier a training checkpoint holds, on the CPU in eval mode (no ImageNet weights)."""
    from crackdet.models.lightning_model import CrackClassifier

    checkpoint = read_checkpoint(ckpt_path, setting)
    path = checkpoint_file(ckpt_path, setting)
    try:
        # Not strict: missing and unexpected weights are named by check_weights_fit below.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Found keys that are")
            model = CrackClassifier.load_from_checkpoint(
                path, weights=None, map_location="cpu", strict=False
            )
    except Exception as exc:  # settings or shapes of another model
        raise _another_model(setting, path, exc) from exc
    check_weights_fit(checkpoint, model, path, setting)
    return model.eval()


class _ClassifierWeights(nn.Module):
    """A network under CrackClassifier's weight names (`net.*`), loaded as Lightning loads one."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Accept checkpoints written before the weights moved under `net.`."""
        upgrade_weight_names(checkpoint)


def load_network(
    ckpt_path: str | Path | None,
    setting: str = "ckpt_path",
    checkpoint: dict[str, Any] | None = None,
) -> tuple[CrackNet, dict[str, Any]]:
    """The plain network a training checkpoint holds and its recorded settings, without Lightning.

    The network CrackClassifier wraps, built from the checkpoint's settings and weights as
    `load_classifier` builds it (same weights, outputs and refusals), on the CPU in eval mode;
    the settings are what that classifier's `hparams` would hold. `checkpoint` is the file's
    `read_checkpoint` contents when the caller has read them already.
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(ckpt_path, setting)
    path = checkpoint_file(ckpt_path, setting)
    # As Lightning's load_from_checkpoint: the recorded settings CrackClassifier takes (others are
    # dropped), with the ImageNet weights replaced by the checkpoint's own.
    names = inspect.signature(build_classifier).parameters
    try:
        recorded = {**checkpoint.get(MODEL_SETTINGS_KEY, {}), "weights": None}
        settings, net = build_classifier(**{k: v for k, v in recorded.items() if k in names})
        model = _ClassifierWeights(net)
        state = {"state_dict": dict(checkpoint["state_dict"])}
        model.on_load_checkpoint(state)
        # Not strict: missing and unexpected weights are named by check_weights_fit below.
        model.load_state_dict(state["state_dict"], strict=False)
    except Exception as exc:  # settings or shapes of another model
        raise _another_model(setting, path, exc) from exc
    check_weights_fit(checkpoint, model, path, setting, name="CrackClassifier")
    return net.eval(), settings


def check_resumable(
    ckpt_path: str | Path, model: nn.Module, resume: bool, setting: str = "ckpt_path"
) -> None:
    """Refuse, before any work, a checkpoint that training cannot continue from (or test)."""
    checkpoint = read_checkpoint(ckpt_path, setting)
    path = checkpoint_file(ckpt_path, setting)
    check_weights_fit(checkpoint, model, path, setting)
    missing = [k for k in _RESUME_KEYS if k not in checkpoint]
    if resume and missing:
        raise CheckpointError(
            f"{setting}={path} holds weights but no training state ({', '.join(missing)}), so "
            "training cannot continue from it. Fix: resume from the run's "
            "checkpoints/last.ckpt or interrupted.ckpt, or test it with train=false."
        )
