"""`--help` and `--cfg job` answer without importing torch or Lightning (they take seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crackdet.cli.config import PROJECT_ROOT

PROBE = """
import runpy, sys
sys.argv = [{script!r}, *{args!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "lightning"}}))
"""


def imported_heavy_packages(script: str, args: list[str]) -> str:
    """The last line the probe prints: which of torch and Lightning `script args` imported."""
    code = PROBE.format(script=str(PROJECT_ROOT / script), args=args)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py", "export.py"])
@pytest.mark.parametrize("args", [["--cfg", "job"], ["--help"]])
def test_entry_points_answer_without_torch(script: str, args: list[str]):
    assert imported_heavy_packages(script, args) == "[]"


def test_the_baseline_config_prints_without_torch():
    # The weights' input size is resolved through torchvision only when the config is used.
    assert imported_heavy_packages("train.py", ["experiment=baseline", "--cfg", "job"]) == "[]"
