"""A torch Dataset over checked image records."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from crackdet.data.images import load_rgb
from crackdet.data.scan import ImageRecord


class ImageRecordDataset(Dataset):
    """Yields (image tensor, label, index) so predictions can be traced back to their file."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        record = self.records[index]
        return self.transform(load_rgb(record.path)), record.label, index

    @property
    def paths(self) -> list[str]:
        """File path of every sample, in index order."""
        return [r.path for r in self.records]

    @property
    def labels(self) -> list[int]:
        """Label of every sample, in index order."""
        return [r.label for r in self.records]
