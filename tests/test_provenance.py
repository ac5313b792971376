"""benchmarks/provenance.py: every result file names its command, machine, commit and date."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import provenance  # noqa: E402


def test_provenance_names_the_command_machine_commit_and_date():
    record = provenance.provenance("benchmarks/x.py", ["--fast"])
    assert record["command"] == "python benchmarks/x.py --fast"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    assert record["commit"].split("+")[0] == head.strip() and re.fullmatch(r"\d{4}-\d\d-\d\d", record["date"])
    assert "CPU" in record["machine"] or "GPU" in record["machine"]


def test_header_says_what_an_older_result_did_not_record():
    lines = provenance.header_lines({"command": "python benchmarks/x.py", "machine": "m"})
    assert lines == ["- command: `python benchmarks/x.py`", "- machine: m",
                     "- commit: not recorded, date: not recorded"]
