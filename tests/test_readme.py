"""README.md starts with the two set-up commands, and CI runs the second one."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_code_block() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("# "), "README.md starts with its title"
    start = lines.index("```bash")
    assert start <= 3, "the commands come first"
    end = lines.index("```", start + 1)
    return lines[start + 1 : end]


def test_readme_starts_with_exactly_two_commands() -> None:
    commands = _first_code_block()
    assert len(commands) == 2
    run_main, run_tests = commands
    assert "./scripts/install" in run_main and "medagent chat --demo" in run_main
    assert "./scripts/install" in run_tests and "pytest" in run_tests


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "sed -n 2p" in ci
    assert (ROOT / "scripts" / "install").stat().st_mode & 0o111
