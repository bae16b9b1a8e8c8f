"""Private APIs of dependencies that crackdet needs, each guarded in one place and tested.

Each seam fails loudly, naming the dependency version, when upstream changes it
(tests/test_seams.py breaks first).
"""

from __future__ import annotations

import lightning as L


def log_step_now(trainer: L.Trainer) -> None:
    """Send the training step's logged values to the loggers now, as Lightning does after it.

    Lightning writes a step's values only after every `on_train_batch_end` hook has returned;
    a run stopped from such a hook (InterruptCheckpoint) would lose that step's row. Lightning
    has no public call for it.
    """
    connector = getattr(trainer, "_logger_connector", None)
    steps = [
        getattr(connector, name, None) for name in ("on_batch_end", "update_train_step_metrics")
    ]
    if not all(callable(step) for step in steps):
        raise RuntimeError(
            f"lightning {L.__version__} no longer has Trainer._logger_connector.on_batch_end / "
            "update_train_step_metrics; crackdet.seams.log_step_now needs updating."
        )
    for step in steps:
        step()
