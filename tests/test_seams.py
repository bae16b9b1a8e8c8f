"""The private APIs in crackdet.seams still exist in the installed dependencies."""

from __future__ import annotations

import lightning as L
import pytest

from crackdet.seams import log_step_now


def test_lightning_still_has_the_step_logging_calls() -> None:
    connector = L.Trainer(logger=False, enable_progress_bar=False)._logger_connector
    assert callable(connector.on_batch_end) and callable(connector.update_train_step_metrics)


def test_a_changed_lightning_fails_loudly() -> None:
    class Changed:
        pass

    with pytest.raises(RuntimeError, match="crackdet.seams.log_step_now needs updating"):
        log_step_now(Changed())  # type: ignore[arg-type]
