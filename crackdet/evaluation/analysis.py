"""Looking at a run's mistakes: the functions behind notebooks/misclassifications.ipynb."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from crackdet.data.classes import CLASS_NAMES
from crackdet.data.images import load_rgb
from crackdet.data.transforms import denormalize
from crackdet.deploy.inference import load_checkpoint
from crackdet.errors import ConfigError
from crackdet.evaluation.mistakes import most_confident_mistakes
from crackdet.evaluation.plots import confusion_matrix_figure, image_grid_figure
from crackdet.evaluation.predictions_file import read_predictions
from crackdet.evaluation.threshold import (
    DEFAULT_THRESHOLD,
    stored_operating_point,
    threshold_metrics,
)
from crackdet.models.lightning_model import CrackClassifier

#: Which mistakes: true crack called "no crack" (missed) or the reverse (false alarm).
MISTAKE_KINDS = {"fn": ("false negatives", 1), "fp": ("false positives", 0)}


@dataclass
class Run:
    """One split's predictions from a training or evaluation run, and the threshold to judge at."""

    run_dir: Path
    kind: str
    split: str
    paths: list[str]
    labels: torch.Tensor
    probs: torch.Tensor
    threshold: float
    threshold_source: str
    ckpt_path: Path | None

    def describe(self) -> str:
        """One line naming the run, split, size and threshold."""
        return (
            f"{self.kind} run {self.run_dir}: {len(self.labels)} {self.split} images, "
            f"threshold {self.threshold:.4g} ({self.threshold_source})"
        )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_run(run_dir: str | Path, split: str | None = None, threshold: float | None = None) -> Run:
    """Predictions of a training run (predictions_<split>.csv) or an eval run (predictions.csv).

    `split` (training runs): test when that file exists, else val. `threshold`: the run's
    operating point when it has one, else 0.5.
    """
    run_dir = Path(run_dir).expanduser()
    metrics = _read_json(run_dir / "metrics.json")
    if (run_dir / "predictions.csv").is_file():
        kind, split, csv = "eval", metrics.get("split", "eval"), run_dir / "predictions.csv"
        ckpt = Path(metrics["ckpt_path"]) if metrics.get("ckpt_path") else None
    else:
        kind = "training"
        split = split or ("test" if (run_dir / "predictions_test.csv").is_file() else "val")
        csv = run_dir / f"predictions_{split}.csv"
        ckpt = run_dir / "checkpoints" / "best.ckpt"
    if not csv.is_file():
        raise ConfigError(
            f"run_dir={run_dir} has no {csv.name}: give the folder of a `python train.py` run "
            "(outputs/train/<run>) or of a `python eval.py` run (outputs/eval/<run>)."
        )
    ckpt = ckpt if ckpt is not None and ckpt.is_file() else None
    point = metrics.get("operating_point") or (stored_operating_point(ckpt) if ckpt else None)
    if threshold is not None:
        source = "given"
    elif point:
        threshold, source = point["threshold"], f"operating point, recall {point['target_recall']}"
    else:
        threshold, source = DEFAULT_THRESHOLD, "default"
    predictions = read_predictions(csv)
    return Run(
        run_dir,
        kind,
        split,
        predictions["path"],
        predictions["label"],
        predictions["prob_crack"],
        float(threshold),
        source,
        ckpt,
    )


def show(fig: Figure) -> None:
    """Display a figure in the notebook as PNG (whatever the matplotlib backend) and free it."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))


def confusion_figure(run: Run) -> Figure:
    """The confusion matrix of the run at its threshold."""
    m = threshold_metrics(run.probs, run.labels, run.threshold)
    counts = [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]
    title = f"{run.split}: {len(run.labels)} images, threshold {run.threshold:.4g}"
    return confusion_matrix_figure(counts, CLASS_NAMES, title)


def mistakes(run: Run, kind: str, k: int) -> list[int]:
    """Positions of the `k` most confident false negatives ("fn") or false positives ("fp")."""
    if kind not in MISTAKE_KINDS:
        raise ConfigError(f"kind={kind} must be one of {list(MISTAKE_KINDS)}.")
    of_class = torch.nonzero(run.labels == MISTAKE_KINDS[kind][1]).flatten()
    chosen = most_confident_mistakes(run.probs[of_class], run.labels[of_class], k, run.threshold)
    return of_class[chosen].tolist()


def _caption(run: Run, position: int) -> str:
    name = Path(run.paths[position]).name
    return (
        f"{name}\ntrue {CLASS_NAMES[int(run.labels[position])]}, "
        f"p(crack)={float(run.probs[position]):.3f}"
    )


def _empty_figure(message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return fig


def mistakes_figure(run: Run, kind: str, k: int = 8, columns: int = 4) -> Figure:
    """The `k` most confident mistakes of one kind as an image grid, file names and p(crack)."""
    name = MISTAKE_KINDS.get(kind, (kind,))[0]
    positions = mistakes(run, kind, k)
    if not positions:
        return _empty_figure(f"No {name} in {run.split} at threshold {run.threshold:.4g}.")
    images = [np.asarray(load_rgb(run.paths[i])) for i in positions]
    return image_grid_figure(
        images,
        [_caption(run, i) for i in positions],
        columns,
        title=f"{run.split}: most confident {name} (threshold {run.threshold:.4g})",
    )


def gradcam_maps(model: CrackClassifier, images: torch.Tensor, target_class: int = 1) -> np.ndarray:
    """Grad-CAM heat maps (N, H, W in [0, 1]) of `target_class` from the last ResNet block.

    The frozen backbone's weights need no gradient: the input is made to require one, so the
    activations of layer4 do, which is all Grad-CAM differentiates.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(target_class)] * len(images)
    net = model.net
    with GradCAM(model=net, target_layers=[net.backbone.layer4[-1]]) as cam:
        return cam(input_tensor=images.detach().clone().requires_grad_(True), targets=targets)


#: Added to the Grad-CAM panel of a model whose backbone was never trained.
RANDOM_BACKBONE_NOTE = (
    "The backbone is random (model.weights=null): these maps show where random features happen "
    "to separate the classes,\nnot learned crack evidence. Train with ImageNet weights for "
    "meaningful maps."
)


def backbone_weights(ckpt_path: str | Path) -> str | None:
    """The `model.weights` the checkpoint's model was trained from (None: random backbone)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return (checkpoint.get("hyper_parameters") or {}).get("weights")


def gradcam_figure(run: Run, k: int = 8, columns: int = 4) -> Figure:
    """Grad-CAM of "crack" over the run's most confident mistakes (both kinds)."""
    positions = mistakes(run, "fn", k) + mistakes(run, "fp", k)
    confidence = {i: abs(float(run.probs[i]) - run.threshold) for i in positions}
    positions = sorted(positions, key=confidence.get, reverse=True)[:k]
    if not positions:
        return _empty_figure(f"No mistakes in {run.split} at threshold {run.threshold:.4g}.")
    if run.ckpt_path is None:
        return _empty_figure(f"No checkpoint found for {run.run_dir}: Grad-CAM needs the model.")
    from pytorch_grad_cam.utils.image import show_cam_on_image

    loaded = load_checkpoint(run.ckpt_path)
    transform = loaded.transform()
    batch = torch.stack([transform(load_rgb(run.paths[i])) for i in positions])
    maps = gradcam_maps(loaded.model, batch)
    overlays = []
    for image, heat in zip(batch, maps, strict=True):
        rgb = denormalize(image, loaded.mean, loaded.std).permute(1, 2, 0).numpy()
        overlays.append(show_cam_on_image(rgb, heat, use_rgb=True))
    title = f"{run.split}: Grad-CAM of 'crack' on the mistakes (red: evidence for crack)"
    if backbone_weights(run.ckpt_path) is None:
        title = f"{title}\n{RANDOM_BACKBONE_NOTE}"
    return image_grid_figure(overlays, [_caption(run, i) for i in positions], columns, title=title)
