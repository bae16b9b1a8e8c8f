"""This process's rank is the one Lightning gives it, whether or not Lightning is imported yet."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from lightning.fabric.utilities import rank_zero

from crackdet.distributed import RANK_VARIABLES, environment_rank
from tests.conftest import PROJECT_ROOT

ENVIRONMENTS = [
    {},
    {"LOCAL_RANK": "1"},
    {"SLURM_PROCID": "3", "LOCAL_RANK": "2"},
    {"RANK": "0", "LOCAL_RANK": "1"},
    {"JSM_NAMESPACE_RANK": "5"},
]


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=str)
def test_the_rank_is_read_from_the_environment_as_lightning_reads_it(monkeypatch, environment):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # What Lightning sets when imported: `_get_rank() or 0`.
    assert environment_rank() == (rank_zero._get_rank() or 0)


PROBE = """
import sys
from crackdet.distributed import process_rank
before = process_rank()
assert "lightning" not in sys.modules
import lightning
print(before, process_rank())
"""


def test_the_rank_before_lightning_is_imported_is_the_rank_after():
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=PROJECT_ROOT,
        env={**env, "SLURM_PROCID": "3", "LOCAL_RANK": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2", "2"]
