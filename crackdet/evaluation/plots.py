"""Matplotlib figures for TensorBoard and reports: confusion matrices and image grids."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix_figure(
    counts: np.ndarray | torch.Tensor, class_names: Sequence[str], title: str = ""
) -> Figure:
    """Counts and row-normalised rates side by side; rows are true labels, columns predictions."""
    counts = np.asarray(counts, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, values, kind in ((axes[0], counts, "counts"), (axes[1], rates, "normalised")):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                text = f"{values[i, j]:d}" if kind == "counts" else f"{values[i, j]:.3f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    color="white" if rates[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(len(class_names)), class_names)
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(kind)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid_figure(
    images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 4, title: str = ""
) -> Figure:
    """Images (H, W, 3 in [0, 1]) in a grid, each with a small caption."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
