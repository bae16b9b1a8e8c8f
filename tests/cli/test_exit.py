"""Entry points leave with os._exit once their work is saved: exit handlers run, files are flushed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

#: A stand-in for an entry point: it leaves a file open with unflushed rows, logs to a file and
#: registers an exit handler, then ends the way the first argument says.
ENTRY_POINT = textwrap.dedent(
    """
    import atexit, logging, sys
    from crackdet.cli.run import run_entry_point

    out = sys.argv[2]
    def main():
        rows = open(out + "/rows.csv", "w")  # never closed: its buffer must still be written
        rows.write("path,prob\\n" + "a.jpg,0.9\\n" * 1000)
        handler = logging.FileHandler(out + "/run.log")
        logging.getLogger("entry").addHandler(handler)
        logging.getLogger("entry").warning("done")
        atexit.register(lambda: open(out + "/handler", "a").write("ran\\n"))
        main.rows = rows
        if sys.argv[1] == "status":
            sys.exit(3)
        if sys.argv[1] == "error":
            raise RuntimeError("boom")
        if sys.argv[1] == "message":
            sys.exit("a message")

    run_entry_point(main)
    """
)


def _run(how: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, how, str(folder)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("how", "status"), [("return", 0), ("status", 3), ("message", 1)])
def test_the_process_keeps_its_status_files_and_exit_handlers(how: str, status: int, tmp_path):
    result = _run(how, tmp_path)
    assert result.returncode == status, result.stderr
    assert (tmp_path / "rows.csv").read_text().count("a.jpg,0.9\n") == 1000
    assert (tmp_path / "run.log").read_text() == "done\n"
    assert (tmp_path / "handler").read_text() == "ran\n"  # once: not again at the real exit
    if how == "message":
        assert "a message" in result.stderr


def test_an_error_leaves_the_normal_way_with_its_traceback(tmp_path):
    result = _run("error", tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: boom" in result.stderr and "Traceback" in result.stderr
    assert (tmp_path / "rows.csv").read_text().count("a.jpg,0.9\n") == 1000
    assert (tmp_path / "handler").read_text() == "ran\n"
