"""Reading the ledger that the `test.count` plugin writes, one line per thing it did."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def ledger_lines(path: Path) -> list[tuple[str, str, str, int]]:
    """(what, run, step, attempt) for every line: what is run, done or rollback."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        what, run_id, step_id, attempt = line.split()
        lines.append((what, run_id, step_id, int(attempt)))
    return lines


def count(path: Path, what: str) -> Counter[str]:
    """How many `what` lines each step has."""
    return Counter(step for kind, _, step, _ in ledger_lines(path) if kind == what)
