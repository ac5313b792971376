"""Where a result came from: the command, machine, commit and date that every committed result file records."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when tracked code differs from it; ``unknown`` outside a checkout.

    Result files are left out of the comparison: a sweep writes them while it runs.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results"], capture_output=True,
                               text=True, cwd=REPO, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def provenance(script: str, argv: list[str] | None = None) -> dict[str, str]:
    """``{"command", "machine", "commit", "date"}`` of the running benchmark ``script`` (``benchmarks/x.py``)."""
    from edgeseg.runtime.sysinfo import describe_machine, format_machine

    return {"command": " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)]),
            "machine": format_machine(describe_machine()).splitlines()[0], "commit": git_commit(),
            "date": datetime.date.today().isoformat()}


def header_lines(record: dict) -> list[str]:
    """The markdown lines that open a result file; fields a record lacks (older results) read ``not recorded``."""
    return [f"- command: `{record.get('command', 'not recorded')}`",
            f"- machine: {record.get('machine', 'not recorded')}",
            f"- commit: {record.get('commit', 'not recorded')}, date: {record.get('date', 'not recorded')}"]
