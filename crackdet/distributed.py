"""Several processes per run: this process's rank, and unpadded evaluation sampling."""

from __future__ import annotations

from collections.abc import Sized

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

from crackdet.errors import DataError


def process_rank() -> int:
    """This process's global rank as Lightning sees it (0 in a single-process run)."""
    return int(getattr(rank_zero_only, "rank", 0))


def eval_sampler(
    dataset: Sized, trainer: L.Trainer | None, split: str
) -> UnrepeatedDistributedSampler | None:
    """For val/test under several processes: each sample on exactly one rank, none repeated.

    Lightning's default DistributedSampler pads the split to a multiple of the world size, so
    metrics would count the padded samples twice.
    """
    if trainer is None or trainer.world_size <= 1:
        return None
    if len(dataset) < trainer.world_size:
        raise DataError(
            f"The {split} split holds {len(dataset)} image(s), fewer than the {trainer.world_size} "
            "processes evaluating it; use fewer trainer.devices or a larger split."
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
