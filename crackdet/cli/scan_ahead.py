"""A training run starts checking its data folder while it is still importing torch.

Importing torch, torchvision and Lightning takes seconds on one core; on a machine with a second
core the scan of the data folder (crackdet.data.scan) runs meanwhile in a background thread,
and the data module's `scan_folder` takes over the unfinished scan. The result is the same as a
scan begun there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from crackdet.data.scan import scan_ahead
from crackdet.distributed import process_rank


class ScanAhead(Callback):
    """Hydra callback, listed first: `train.py` starts scanning `data.data_dir` at once."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the scan of a single training run (a multirun's jobs share the scan cache)."""
        if str(config.get("task_name")) != "train" or process_rank() != 0:
            return  # DDP children read the scan that rank zero caches
        try:
            data = config.data
            if data.get("synthetic"):
                return  # its images are generated first, by the data module
            data_dir, cache_dir = data.data_dir, data.get("cache_dir")
            classes = OmegaConf.to_container(data.classes, resolve=True)
        except Exception:  # noqa: BLE001  (a setting that does not resolve: the checks say so)
            return
        if isinstance(classes, dict) and Path(str(data_dir)).expanduser().is_dir():
            scan_ahead(str(data_dir), classes, None if cache_dir is None else str(cache_dir))
