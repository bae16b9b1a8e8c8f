"""Figures for choosing and judging an operating point: curves, histograms, reliability."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from crackdet.data.classes import CLASS_NAMES
from crackdet.evaluation.calibration import expected_calibration_error
from crackdet.evaluation.threshold import threshold_metrics

#: Marker style per operating point, in the order they are given.
_MARKERS = ("o", "s", "^", "D")


def _mark_points(ax, probs, labels, points: Mapping[str, float], x: str, y: str) -> None:
    """Mark each named threshold on a curve whose axes are two `threshold_metrics` rates."""
    for (name, threshold), marker in zip(points.items(), _MARKERS, strict=False):
        m = threshold_metrics(probs, labels, threshold)
        m["fpr"] = 1 - m["specificity"]
        ax.plot(m[x], m[y], marker, markersize=8, label=f"{name} (t={threshold:.3g})")


def _rate_curve_figure(
    probs: torch.Tensor,
    labels: torch.Tensor,
    points: Mapping[str, float] | None,
    draw: Callable[[Axes], None],
    rates: tuple[str, str],
    legend: str,
    **axes: Any,
) -> Figure:
    """A curve drawn by `draw`, the given thresholds marked on it at their (x, y) `rates`."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    draw(ax)
    _mark_points(ax, probs, labels, points or {}, *rates)
    ax.set(**axes)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    return fig


def pr_curve_figure(
    probs: torch.Tensor,
    labels: torch.Tensor,
    points: Mapping[str, float] | None = None,
    title: str = "",
) -> Figure:
    """Precision against recall, with average precision and the given thresholds marked."""
    labels = labels.long()
    precision, recall, _ = binary_precision_recall_curve(probs, labels)
    ap = float(binary_average_precision(probs, labels))

    def draw(ax: Axes) -> None:
        ax.step(recall.numpy(), precision.numpy(), where="post", label=f"AP = {ap:.4f}")

    return _rate_curve_figure(
        probs,
        labels,
        points,
        draw,
        ("recall", "precision"),
        "lower left",
        xlabel="recall (cracks found)",
        ylabel="precision (alarms that are cracks)",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
        title=title or "precision-recall",
    )


def roc_curve_figure(
    probs: torch.Tensor,
    labels: torch.Tensor,
    points: Mapping[str, float] | None = None,
    title: str = "",
) -> Figure:
    """True-positive rate against false-positive rate, with AUROC and thresholds marked."""
    labels = labels.long()
    fpr, tpr, _ = binary_roc(probs, labels)
    auroc = float(binary_auroc(probs, labels))

    def draw(ax: Axes) -> None:
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUROC = {auroc:.4f}")
        ax.plot([0, 1], [0, 1], ":", color="grey")

    return _rate_curve_figure(
        probs,
        labels,
        points,
        draw,
        ("fpr", "recall"),
        "lower right",
        xlabel="false-positive rate",
        ylabel="recall",
        xlim=(-0.01, 1),
        ylim=(0, 1.01),
        title=title or "ROC",
    )


def threshold_sweep_figure(
    probs: torch.Tensor,
    labels: torch.Tensor,
    points: Mapping[str, float] | None = None,
    title: str = "",
) -> Figure:
    """Recall and precision as the threshold moves, with the given thresholds as vertical lines."""
    precision, recall, thresholds = binary_precision_recall_curve(probs, labels.long())
    fig, ax = plt.subplots(figsize=(6, 4))
    # The curves' last point (recall 0) has no threshold of its own.
    ax.step(thresholds.numpy(), recall[:-1].numpy(), where="pre", label="recall")
    ax.step(thresholds.numpy(), precision[:-1].numpy(), where="pre", label="precision")
    for (name, threshold), style in zip((points or {}).items(), ("--", ":", "-."), strict=False):
        ax.axvline(threshold, linestyle=style, color="grey", label=f"{name} (t={threshold:.3g})")
    ax.set(
        xlabel="threshold on p(crack)",
        ylabel="rate",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=title or "recall and precision against threshold",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def probability_histogram_figure(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float | None = None, title: str = ""
) -> Figure:
    """Histogram of p(crack) for each true class (log counts: the mistakes are rare)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    for label, name in enumerate(CLASS_NAMES):
        values = probs[labels == label].numpy()
        ax.hist(values, bins=bins, alpha=0.6, label=f"true {name} ({len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_yscale("log")
    # Counts as plain numbers at 1, 2, 5, 10, 20, ... instead of powers of ten.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="p(crack)", ylabel="images", title=title or "p(crack) per true class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean p(crack), observed crack fraction and image count of each non-empty bin."""
    p, y = probs.double().numpy(), labels.double().numpy()
    which = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    keep = counts > 0
    mean_p = np.bincount(which, weights=p, minlength=n_bins)[keep] / counts[keep]
    frac = np.bincount(which, weights=y, minlength=n_bins)[keep] / counts[keep]
    return mean_p, frac, counts[keep]


def reliability_figure(
    curves: Mapping[str, torch.Tensor], labels: torch.Tensor, n_bins: int = 15, title: str = ""
) -> Figure:
    """Observed crack fraction against mean p(crack) per bin, one line per set of probabilities."""
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, probs in curves.items():
        mean_p, frac, counts = _reliability_bins(probs, labels, n_bins)
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.plot(mean_p, frac, "o-", label=f"{name}: ECE = {ece:.4f}")
        ax_count.plot(mean_p, counts, "o", label=name)
    ax.set(
        ylabel="observed fraction of cracks",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=title or "reliability",
    )
    ax.legend(fontsize=8)
    ax_count.set(xlabel="mean p(crack) in bin", ylabel="images", yscale="log")
    fig.tight_layout()
    return fig
