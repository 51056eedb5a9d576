"""On CI every skipped test is a failure: a missing PostgreSQL, tmux or data set must not pass quietly.

CI is recognised by ``CI`` set to a true value (``.ci/run`` sets it). Only a skip the runner asked for by
name survives there: one whose reason starts with :data:`EXPLICIT` (for example ``MEDAGENT_SKIP_VLLM=1``).
Loaded by ``tests/conftest.py``; a plugin module of its own so that it can be tested with ``-p``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

EXPLICIT = "switched off explicitly"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_on_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not on_ci():
        return
    reason = _reason(report)
    if not reason.startswith(EXPLICIT):
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every component is required: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    _fail_on_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield  # a whole module skipped at import (importorskip, allow_module_level)
    _fail_on_ci(outcome.get_result())
