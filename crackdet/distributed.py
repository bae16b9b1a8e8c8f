"""Several processes per run: this process's rank, and unpadded evaluation sampling.

Lightning is imported only where it is used: predict.py asks for the rank without needing
Lightning, whose import takes seconds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sized
from typing import TYPE_CHECKING

from crackdet.errors import DataError

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

#: The variables Lightning reads a process's rank from when it is imported, first set first
#: (`lightning.fabric.utilities.rank_zero._get_rank`).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
#: The module on whose `rank_zero_only` function Lightning keeps the rank.
_RANK_HOLDER = "lightning_utilities.core.rank_zero"


def environment_rank() -> int:
    """The rank Lightning gives this process when imported: from the environment, else 0."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0


def process_rank() -> int:
    """This process's global rank as Lightning sees it (0 in a single-process run).

    Lightning keeps it on `rank_zero_only.rank`, read from the environment when Lightning is
    imported and set by the Trainer's strategy; until Lightning is imported, it is read from the
    environment the same way, without importing Lightning.
    """
    holder = sys.modules.get(_RANK_HOLDER)
    rank = getattr(getattr(holder, "rank_zero_only", None), "rank", None)
    return environment_rank() if rank is None else int(rank)


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
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
