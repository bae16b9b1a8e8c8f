"""A start that fails leaves the run directory as it found it.

Hydra creates the run directory, opens the job log and writes `.hydra/*.yaml` before the task
runs, so a start refused by the task (a config value, a missing data folder, weights or
checkpoint) would leave an empty run folder behind, or change the record of an earlier run when
`hydra.run.dir` points at one. `RunDirRecord` notes what the directory held before Hydra touched
it (Hydra's record files by content, the job logs by length, the logger folders by listing);
`undo()` removes only what the start created and puts Hydra's record back. The Hydra callback
`crackdet.cli.validation.OutputDirCheck` takes the record; `run_main` undoes a failed start.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("crackdet")

#: Folders a start writes before any result exists: Hydra's record and the loggers' first files.
START_FOLDERS = (".hydra", "tensorboard", "csv")


def _listing(run_dir: Path) -> set[Path]:
    """Every top-level entry, and everything inside the folders a start writes to."""
    if not run_dir.is_dir():
        return set()
    paths = set(run_dir.iterdir())
    for name in (*START_FOLDERS, "checkpoints"):
        if (run_dir / name).is_dir():
            paths.update((run_dir / name).rglob("*"))
    return paths


@dataclass
class RunDirRecord:
    """What a run directory held before a start, and how to return it to that state."""

    run_dir: Path
    #: The highest folder this start will create (None: the run directory already exists).
    created_top: Path | None
    before: set[Path] = field(default_factory=set)
    hydra_files: dict[Path, bytes] = field(default_factory=dict)
    #: Hydra appends to a job log (`train.log`) that exists: its length before the start.
    log_lengths: dict[Path, int] = field(default_factory=dict)

    @classmethod
    def take(cls, run_dir: str | Path) -> RunDirRecord:
        """Note the state of `run_dir` (which may not exist yet) before Hydra writes to it."""
        run_dir = Path(run_dir).absolute()
        created_top = None
        if not run_dir.exists():
            created_top = run_dir
            while not created_top.parent.exists():
                created_top = created_top.parent
        hydra_dir = run_dir / ".hydra"
        return cls(
            run_dir=run_dir,
            created_top=created_top,
            before=_listing(run_dir),
            hydra_files={p: p.read_bytes() for p in hydra_dir.glob("*") if p.is_file()},
            log_lengths={p: p.stat().st_size for p in run_dir.glob("*.log") if p.is_file()},
        )

    def _is_start_file(self, path: Path) -> bool:
        relative = path.relative_to(self.run_dir)
        empty_folder = path.is_dir() and not any(path.iterdir())
        job_log = path.parent == self.run_dir and path.suffix == ".log"
        return job_log or relative.parts[0] in START_FOLDERS or empty_folder

    def undo(self) -> bool:
        """Remove what the start created and restore Hydra's record; False if results exist.

        A new file outside the start's own folders (a checkpoint, metrics, a bad-file list)
        means the run got past its start: then nothing is touched.
        """
        new = _listing(self.run_dir) - self.before
        kept = sorted(p for p in new if not self._is_start_file(p))
        if kept:
            log.info("Kept %s: the run wrote %s before it stopped.", self.run_dir, kept[0].name)
            return False
        for path in sorted(new, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for path, content in self.hydra_files.items():
            path.write_bytes(content)
        for path, length in self.log_lengths.items():
            if path.is_file():
                with path.open("r+b") as handle:
                    handle.truncate(length)
        if self.created_top is not None:
            self._remove_created_folders()
        return True

    def _remove_created_folders(self) -> None:
        # Only folders left empty: another run may have started in a parent meanwhile.
        folder = self.run_dir
        while True:
            try:
                folder.rmdir()
            except OSError:
                return
            if folder == self.created_top:
                return
            folder = folder.parent


_pending: RunDirRecord | None = None


def record_start(run_dir: str | Path) -> None:
    """Note the state of this process's run directory before Hydra creates or writes to it."""
    global _pending
    _pending = RunDirRecord.take(run_dir)


def undo_failed_start() -> None:
    """Return the recorded run directory to its state before the start (once)."""
    global _pending
    record, _pending = _pending, None
    if record is not None:
        record.undo()
