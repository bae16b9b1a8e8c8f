"""Choosing the misclassified images worth looking at: the most confidently wrong first."""

from __future__ import annotations

import torch

from crackdet.evaluation.threshold import decisions


def most_confident_mistakes(
    probs: torch.Tensor, labels: torch.Tensor, k: int, threshold: float = 0.5
) -> torch.Tensor:
    """Positions of up to `k` misclassified samples, the most confidently wrong first."""
    preds = decisions(probs, threshold)
    wrong = torch.nonzero(preds != labels).flatten()
    confidence = torch.where(labels[wrong] == 1, 1 - probs[wrong], probs[wrong])
    return wrong[torch.argsort(confidence, descending=True)[:k]]
