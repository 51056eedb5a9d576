"""The import layers of pyproject.toml's ``[tool.importlinter]`` hold, and the check catches an upward import.

The contract is run the way a developer runs it (``lint-imports`` with the repository's configuration), in a
subprocess so that ``medagent`` resolves to the tree under test: the repository itself, or a temporary copy with
one forbidden import added. Each run takes about a second.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "pyproject.toml"
_RESULT = re.compile(r"^(?P<name>.+?) (?P<status>KEPT|BROKEN)\b", re.MULTILINE)


def _lint(root: Path) -> tuple[int, str, dict[str, str]]:
    """Run the contracts on the ``medagent`` package under ``root``: exit code, output, status per contract."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "400", "NO_COLOR": "1"}
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               str(CONFIG), "--no-cache"]
    done = subprocess.run(command, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    return done.returncode, output, {m["name"].strip(): m["status"] for m in _RESULT.finditer(output)}


def _names(status: dict[str, str], wanted: str) -> set[str]:
    return {name for name, value in status.items() if value == wanted}


def test_the_layers_hold() -> None:
    code, output, status = _lint(REPO)
    assert code == 0, output
    assert len(status) >= 6 and not _names(status, "BROKEN"), output


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """A model card importing the simulators (a floor module reaching the roles) is reported, by name."""
    shutil.copytree(REPO / "medagent", tmp_path / "medagent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    card = tmp_path / "medagent" / "cards.py"
    card.write_text(card.read_text() + "\nimport medagent.simulators  # an upward import\n")

    code, output, status = _lint(tmp_path)

    assert code != 0, output
    broken = _names(status, "BROKEN")
    assert any(name.startswith("medagent's rooms") for name in broken), output
    assert any(name.startswith("the tool interface") for name in broken), output
    # the import exists only in the copy: this proves the copy, not the installed package, was analysed
    assert "medagent.cards -> medagent.simulators" in output, output
