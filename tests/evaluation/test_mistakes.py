"""The misclassified images shown first are the most confidently wrong ones."""

from __future__ import annotations

import torch

from crackdet.evaluation.mistakes import most_confident_mistakes


def test_most_confidently_wrong_first_and_at_most_k() -> None:
    probs = torch.tensor([0.9, 0.2, 0.6, 0.05, 0.4, 0.99])
    labels = torch.tensor([1, 1, 0, 1, 0, 0])
    # Wrong at 0.5: 1 (crack at 0.2), 2 (no crack at 0.6), 3 (crack at 0.05), 5 (no crack at 0.99).
    assert most_confident_mistakes(probs, labels, k=3).tolist() == [5, 3, 1]
    assert most_confident_mistakes(probs, labels, k=10, threshold=0.1).tolist() == [5, 3, 2, 4]
