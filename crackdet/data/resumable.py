"""Training batches whose order is fixed by (seed, epoch), resumable part-way through an epoch.

Lightning saves `state_dict()` of every training DataLoader that has one in each checkpoint and
calls `load_state_dict()` before iterating again when it resumes. `ResumableDataLoader` records
which epoch it is in and how many batches it has handed out, so a run resumed from a checkpoint
saved mid-epoch sees exactly the batches the interrupted run had not reached yet, in the same
order, without reading the skipped images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A shuffle that depends only on (seed, epoch); each process takes its share of it.

    The seed defaults to the run's seed (`PL_GLOBAL_SEED`, set by `seed_everything`). Without
    one it is random in a single process, and 0 across processes (which must agree), as in the
    DistributedSampler Lightning puts in place under DDP. Being a DistributedSampler already,
    Lightning leaves this one in place.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: int | None = None):
        distributed = dist.is_available() and dist.is_initialized()
        if seed is None and "PL_GLOBAL_SEED" in os.environ:
            seed = int(os.environ["PL_GLOBAL_SEED"])
        elif seed is None:
            seed = 0 if distributed else torch.initial_seed() % 2**62
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=None if distributed else 1,
            rank=None if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self._skip = 0

    def skip_next(self, n_samples: int) -> None:
        """Start the next pass over this epoch's order at its `n_samples`-th index."""
        self._skip = n_samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self._skip = self._skip, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `ResumableSampler` whose position in the epoch goes into checkpoints.

    With a `generator`, it is re-seeded from (seed, epoch) at the start of every epoch. Worker
    processes that are started anew take their seeds from it; persistent workers (the default
    with data.num_workers > 0) keep the streams of their first epoch, so with random
    augmentation a resumed run's augmentations differ from the uninterrupted run's.
    """

    _batches_done = 0
    _pending: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator: the sampler's position is set when iteration really starts, after
        # Lightning has called `set_epoch` and `load_state_dict`.
        sampler = self._resumable_sampler()
        pending, self._pending = self._pending, None
        self._batches_done = 0
        if sampler is not None:
            if pending and pending["epoch"] == sampler.epoch:
                self._batches_done = pending["batches"]
                sampler.skip_next(self._batches_done * int(self.batch_size or 1))
            if self.generator is not None:
                self.generator.manual_seed(sampler.seed + sampler.epoch)
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def _resumable_sampler(self) -> ResumableSampler | None:
        return self.sampler if isinstance(self.sampler, ResumableSampler) else None

    def state_dict(self) -> dict[str, int]:
        """The sampler's seed, the epoch, and the number of batches handed out in it."""
        sampler = self._resumable_sampler()
        if sampler is None:
            return {}
        return {"seed": sampler.seed, "epoch": sampler.epoch, "batches": self._batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue the saved epoch after its last batch; a later epoch starts from its beginning."""
        sampler = self._resumable_sampler()
        if sampler is None or not state_dict:
            return
        # The same order as the saved run, even when its seed was drawn at random.
        sampler.seed = state_dict["seed"]
        self._pending = dict(state_dict)
