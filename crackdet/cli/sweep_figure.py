"""The accuracy/cost figure of a sweep: each job's accuracy against its training images/s."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crackdet.io import atomic_write_bytes

FIGURE_FILE = "accuracy_vs_speed.png"


def accuracy_metric(rows: Sequence[Mapping[str, Any]]) -> str:
    """`test/acc` when any job measured it, else `val/acc`."""
    has_test = any(r["metrics"].get("test/acc") is not None for r in rows)
    return "test/acc" if has_test else "val/acc"


def _short(overrides: Sequence[str]) -> str:
    """`model.backbone=resnet50 model.trainable=head` -> `backbone=resnet50 trainable=head`."""
    return " ".join(o.removeprefix("model.") for o in overrides)


def plot_accuracy_vs_speed(
    rows: Sequence[Mapping[str, Any]], labels: Sequence[Sequence[str]], sweep_dir: Path
) -> Path | None:
    """Draw `<sweep_dir>/accuracy_vs_speed.png`, one labelled point per job that has both values.

    The speed is the measured training throughput. Jobs that trained on cached features are
    drawn hollow: their images/s is the head's alone, not the backbone's. None when no job
    has both values.
    """
    metric = accuracy_metric(rows)
    points = [
        (r["cost"]["train_images_per_s"], r["metrics"][metric], _short(label), r["cost"])
        for r, label in zip(rows, labels, strict=True)
        if r["status"] == "ok"
        and (r.get("cost") or {}).get("train_images_per_s")
        and r["metrics"].get(metric) is not None
    ]
    if not points:
        return None
    from crackdet.evaluation.plots import plt  # the project's matplotlib, on the Agg backend

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for speed, accuracy, label, cost in points:
        cached = bool(cost.get("cached_features"))
        ax.scatter(speed, accuracy, s=60, facecolors="none" if cached else "C0", edgecolors="C0")
        ax.annotate(
            label or "(defaults)",
            (speed, accuracy),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)  # room for the labels
    ax.set(
        xlabel="training images/s (measured, log scale)",
        ylabel=f"{metric} (best checkpoint, {metric.split('/')[0]} split)",
        title=f"{len(points)} job(s) of {sweep_dir.name}; hollow: trained on cached features",
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(Path(sweep_dir) / FIGURE_FILE, buffer.getvalue())
