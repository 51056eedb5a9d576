"""The fuzzing job's figures reach CI's log: a short fuzz run under pytest, as `.ci/run` starts it, ends with a
terminal summary of executions, seconds and failures found per target, the same figures as its JSON report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_a_fuzz_run_prints_its_figures_per_target_in_the_terminal_summary(tmp_path: Path) -> None:
    report = tmp_path / "fuzz.json"
    environment = {**os.environ, "MEDAGENT_FUZZ_BUDGET_S": "2", "MEDAGENT_FUZZ_REPORT": str(report)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/fuzz/test_fuzz.py::test_fuzzed_inputs_fail_only_with_typed_errors"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(report.read_text())
    summary = done.stdout.split("fuzzing (seed 0, budget 2 s)", 1)[1]  # after the passing test: pytest's summary
    assert figures["executions"]
    for target, executions in figures["executions"].items():
        found = sum(finding["target"] == target for finding in figures["findings"])
        line = rf"^{re.escape(target)} +{executions} executions +{figures['seconds'][target]:.1f} s +{found} failures"
        assert re.search(line, summary, re.MULTILINE), (target, summary)
    total = sum(figures["executions"].values())
    assert re.search(rf"^total +{total} executions", summary, re.MULTILINE), summary
