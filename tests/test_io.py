"""Result files are written whole or not at all, and readable like any other file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from crackdet.io import write_csv, write_json


def test_results_get_the_usual_permissions(tmp_path: Path) -> None:
    path = write_json(tmp_path / "metrics.json", {"val/acc": 0.5})
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would, not 0o600
    assert json.loads(path.read_text()) == {"val/acc": 0.5}


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    write_csv(tmp_path / "predictions.csv", ["path", "pred"], [["a.jpg", 1]])
    write_csv(tmp_path / "predictions.csv", ["path", "pred"], [["b.jpg", 0]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    assert (tmp_path / "predictions.csv").read_text().splitlines() == ["path,pred", "b.jpg,0"]
