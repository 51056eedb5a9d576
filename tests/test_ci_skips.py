"""On CI (CI=true, as .ci/run sets) a skipped test fails unless it was switched off explicitly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SUITE = '''
import pytest

def test_needs_postgres():
    pytest.skip("PostgreSQL server binaries are not installed")

@pytest.mark.skipif(True, reason="tmux is not installed")
def test_needs_tmux():
    pass

def test_switched_off():
    pytest.skip("switched off explicitly: MEDAGENT_SKIP_VLLM=1")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False

def test_runs():
    assert True
'''


def _pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    environment["PYTHONPATH"] = str(REPO_ROOT)
    if ci is not None:
        environment["CI"] = ci
    (folder / "pytest.ini").write_text("[pytest]\n")  # not the repository's settings
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.ci_skips", "-p", "no:cacheprovider",
               str(folder / "test_suite.py")]
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("value", "meant"), [("true", True), ("1", True), ("YES", True), ("false", False),
                                              ("", False), (None, False)])
def test_ci_is_recognised_by_a_true_value(monkeypatch: pytest.MonkeyPatch, value: str | None, meant: bool) -> None:
    from tests.ci_skips import on_ci

    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert on_ci() is meant


def test_on_ci_a_skipped_component_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    result = _pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "2 failed" in result.stdout or "2 errors" in result.stdout or (
        "1 failed" in result.stdout and "1 error" in result.stdout), result.stdout
    assert "every component is required: PostgreSQL server binaries are not installed" in result.stdout
    assert "every component is required: tmux is not installed" in result.stdout
    assert "1 skipped" in result.stdout and "1 xfailed" in result.stdout and "1 passed" in result.stdout


def test_off_ci_skips_stay_skips(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    result = _pytest(tmp_path, "false")
    assert result.returncode == 0, result.stdout
    assert "3 skipped" in result.stdout and "1 xfailed" in result.stdout


def test_a_module_skipped_at_import_fails_on_ci(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text('import pytest\npytest.importorskip("no_such_module_medagent")\n')
    result = _pytest(tmp_path, "true")
    assert result.returncode != 0 and "every component is required" in result.stdout, result.stdout


def test_ci_runs_with_ci_set_and_install_provides_the_required_components() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "export CI=true" in ci
    install = (REPO_ROOT / "scripts" / "install").read_text()
    assert "tmux" in install and "postgresql" in install
