"""The fuzzing figures in pytest's terminal summary: pytest captures what a passing test prints, and CI's log
should show per target how many inputs ran, for how long, and how many failures they found."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

FIGURES = pytest.StashKey[dict[str, Any]]()


@pytest.fixture
def fuzz_figures(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """Hands a fuzz run's report (the JSON ``tests.fuzz.targets`` writes) to the terminal summary."""
    def keep(figures: dict[str, Any]) -> None:
        request.config.stash[FIGURES] = figures
    return keep


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, None)
    if figures is None:  # the fuzz run did not get as far as its report
        return
    found = Counter(str(finding["target"]) for finding in figures["findings"])
    executions, seconds = figures["executions"], figures["seconds"]
    terminalreporter.write_sep("-", f"fuzzing (seed {figures['seed']}, budget {figures['budget_s']:g} s)")
    for name in sorted(executions):
        terminalreporter.write_line(f"{name:<24} {executions[name]:>8} executions {seconds.get(name, 0.0):>7.1f} s "
                                    f"{found[name]:>3} failures found")
    terminalreporter.write_line(f"{'total':<24} {sum(executions.values()):>8} executions "
                                f"{sum(seconds.values()):>7.1f} s {sum(found.values()):>3} failures found")
