"""The README's table of faults names tests that exist."""

from __future__ import annotations

import re

from crackdet.cli.config import PROJECT_ROOT


def test_every_test_the_fault_table_names_exists() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("### Faults and how they are handled")[1].split("\n### ")[0]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", section)
    assert len(named) >= 10
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (PROJECT_ROOT / path).is_file()
        or f"def {name}(" not in (PROJECT_ROOT / path).read_text()
    ]
    assert missing == []
