"""The fuzzing job: mutated real inputs through medagent's loaders and parsers, with a fixed time budget.

``MEDAGENT_FUZZ_BUDGET_S`` (default 20 s, all targets together) sizes the run; ``MEDAGENT_FUZZ_SEED`` picks
the mutations (default 0: the same inputs every run; ``.ci/run`` takes a new one each day, so CI explores new
inputs); ``MEDAGENT_FUZZ_REPORT`` names a JSON file for the figures (executions, seconds, findings per target)
and ``MEDAGENT_FUZZ_FOUND`` a folder that keeps the inputs that failed. The inputs that once found a bug live in
``tests/fuzz/corpus/<target>/`` and are replayed on every run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fuzz.engine import Target, check_one

CORPUS = Path(__file__).parent / "corpus"
REPO = Path(__file__).resolve().parents[2]
BUDGET_S = float(os.environ.get("MEDAGENT_FUZZ_BUDGET_S", "20"))
SEED = int(os.environ.get("MEDAGENT_FUZZ_SEED", "0"))
ADDRESS_SPACE = 6 * 2**30  # the worker's memory limit: a blow-up is a MemoryError finding, not a dead machine
# Found bugs not fixed yet, by (target, exception, file): reported without failing the fuzz run; their corpus
# inputs are strict xfails, so the fix turns them into failures until the entry here is removed.
KNOWN_OPEN: dict[tuple[str, str, str], str] = {}
KNOWN_OPEN_INPUTS: set[str] = set()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_fuzzed_inputs_fail_only_with_typed_errors(tmp_path: Path,
                                                  fuzz_figures: Callable[[dict[str, Any]], None]) -> None:
    report = Path(os.environ.get("MEDAGENT_FUZZ_REPORT") or tmp_path / "fuzz.json")
    found = Path(os.environ.get("MEDAGENT_FUZZ_FOUND") or tmp_path / "found")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-m", "tests.fuzz.targets", str(BUDGET_S), str(SEED), str(found),
                              str(report)], check=False, cwd=REPO, env=env, preexec_fn=_limit_memory,
                             capture_output=True, text=True, timeout=BUDGET_S + 300)
    assert process.returncode == 0, process.stderr[-4000:]
    figures = json.loads(report.read_text())
    fuzz_figures(figures)  # for the terminal summary (tests/fuzz/conftest.py)
    total = sum(figures["executions"].values())
    print(f"fuzz: seed {SEED}, {total} executions in {sum(figures['seconds'].values()):.0f} s, "
          f"{len(figures['findings'])} findings (known open ones included); per target: {figures['executions']}")
    assert total > 0 and set(figures["executions"]) == set(_targets())
    findings = [f"{f['target']}: {f['kind']} at {f['where']} (input {found / f['target'] / f['input_sha']})"
                for f in figures["findings"]
                if (f["target"], f["kind"], f["where"].split(":")[0]) not in KNOWN_OPEN]
    assert not findings, (f"untyped failures with seed {SEED} (copy each input into tests/fuzz/corpus/<target>/):\n"
                          + "\n".join(findings))


_BUILT: dict[str, Target] = {}


def _targets() -> dict[str, Target]:
    if not _BUILT:
        from tests.fuzz.targets import all_targets

        _BUILT.update({target.name: target for target in all_targets()})
    return _BUILT


def _corpus() -> list[Path]:
    return sorted(path for path in CORPUS.glob("*/*") if path.is_file())


def _replayed(path: Path) -> object:
    name = f"{path.parent.name}/{path.name}"
    known = name in KNOWN_OPEN_INPUTS
    marks = [pytest.mark.xfail(strict=True, reason="a known open bug (KNOWN_OPEN)")] if known else []
    return pytest.param(path, id=name, marks=marks)


@pytest.mark.parametrize("path", [_replayed(path) for path in _corpus()])
def test_corpus_inputs_that_found_bugs_stay_fixed(path: Path) -> None:
    target = _targets()[path.parent.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert check_one(target, path.read_bytes()) is None
