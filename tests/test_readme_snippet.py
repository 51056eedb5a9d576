"""The README's user-tool example (the python block after ``<!-- snippet: user-tool -->``) runs as printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, TEST_SECRET

MARKER = "<!-- snippet: user-tool -->"
MAX_LINES = 15  # the README promises a user tool in under 15 lines of code


def snippet(readme: str, marker: str = MARKER) -> str:
    """The first fenced python block after ``marker``."""
    assert marker in readme, f"README.md has no {marker} line"
    lines = readme.split(marker, 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.strip() == "```python") + 1
    end = next(index for index in range(start, len(lines)) if lines[index].strip() == "```")
    return "\n".join(lines[start:end]) + "\n"


def test_the_readme_user_tool_snippet_runs_and_calls_the_tool(tmp_path: Path) -> None:
    code = snippet((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert len([line for line in code.splitlines() if line.strip()]) <= MAX_LINES
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
    environment.update({"MEDAGENT_HOME": str(tmp_path / "home"), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                        "MEDAGENT_PLUGINS": "false"})
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            env=environment, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    # the commented output in the snippet is what it prints: the tool ran with the arguments it was given
    printed = [line.split("#", 1)[1].strip() for line in code.splitlines() if "print(" in line and "#" in line]
    assert printed and printed[0] in result.stdout, (printed, result.stdout)
