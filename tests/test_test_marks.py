"""Selection by marker stays true: every test that starts the real llama.cpp server is marked ``llama``, and every
test on the real vLLM server is marked ``vllm`` with the long timeout its session fixture needs (pytest's timeout
covers fixture set-up, and starting that server alone may take ``STARTUP_TIMEOUT_S``).

A test starts llama.cpp when its body, or a helper or fixture of its module that it reaches by name, constructs
``EmbeddedLlamaServer``, runs ``llama_cpp.server`` or the CLI's ``--demo``, or builds an ``embedded`` planner
without an endpoint. A study file or a CLI call that reaches the embedded default another way (a YAML planner,
``ask`` without an endpoint) is not seen here: such tests carry the mark themselves. The marks are read from the
imported module, as pytest reads them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.vllm_server import TEST_TIMEOUT_S

TESTS = Path(__file__).parent
_CANDIDATE = re.compile(r"EmbeddedLlamaServer\(|llama_cpp\.server|--demo|backend=\"embedded\"|vllm_url")
Function = ast.FunctionDef | ast.AsyncFunctionDef


def _starts_llama(function: Function) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            called = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            backend = keywords.get("backend")
            if called == "EmbeddedLlamaServer" or (isinstance(backend, ast.Constant) and backend.value == "embedded"
                                                   and "endpoint" not in keywords):
                return True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            text = node.value.decode(errors="replace") if isinstance(node.value, bytes) else node.value
            if "llama_cpp.server" in text or text == "--demo":
                return True
    return False


def _takes_vllm(function: Function) -> bool:
    return any(argument.arg == "vllm_url" for argument in [*function.args.args, *function.args.kwonlyargs])


def _reached(function: Function, module_functions: dict[str, Function]) -> Iterator[Function]:
    """The function and the module's functions (helpers, fixtures) it names or takes as arguments, transitively."""
    queue, seen = [function], {function.name}
    while queue:
        current = queue.pop()
        yield current
        names = {node.id for node in ast.walk(current) if isinstance(node, ast.Name)}
        names |= {argument.arg for argument in [*current.args.args, *current.args.kwonlyargs]}
        for name in sorted(names - seen):
            if name in module_functions:
                seen.add(name)
                queue.append(module_functions[name])


def _tests(tree: ast.Module) -> Iterator[tuple[str | None, Function]]:
    for node in tree.body:
        if isinstance(node, Function) and node.name.startswith("test"):
            yield None, node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            yield from ((node.name, item) for item in node.body
                        if isinstance(item, Function) and item.name.startswith("test"))


def _marks(module: ModuleType, owner_name: str | None, name: str) -> list[Any]:
    owner = getattr(module, owner_name) if owner_name else module
    marks = list(getattr(getattr(owner, name), "pytestmark", []))
    for holder in {id(module): module, id(owner): owner}.values():
        found = getattr(holder, "pytestmark", [])
        marks += found if isinstance(found, list) else [found]
    return marks


def problems(source: str, module: ModuleType, label: str) -> tuple[list[str], list[str]]:
    """(tests that start llama.cpp or use vLLM, what is wrong with their marks) for one test module."""
    tree = ast.parse(source)
    functions = {node.name: node for node in tree.body if isinstance(node, Function)}
    found, wrong = [], []
    for owner, test in _tests(tree):
        reached = list(_reached(test, functions))
        llama, vllm = any(map(_starts_llama, reached)), any(map(_takes_vllm, reached))
        if not (llama or vllm):
            continue
        name = f"{label}::{owner + '::' if owner else ''}{test.name}"
        found.append(name)
        marks = _marks(module, owner, test.name)
        names = {mark.name for mark in marks}
        timeouts = [mark.args[0] for mark in marks if mark.name == "timeout" and mark.args]
        if llama and "llama" not in names:
            wrong.append(f"{name} starts the llama.cpp server but is not marked llama")
        if vllm and ("vllm" not in names or not timeouts or min(timeouts) < TEST_TIMEOUT_S):
            wrong.append(f"{name} uses the vLLM server but is not marked vllm with timeout(TEST_TIMEOUT_S)")
    return found, wrong


def test_every_test_on_a_real_planner_server_is_marked_for_it() -> None:
    found, wrong = [], []
    for path in sorted(TESTS.rglob("test_*.py")):
        source = path.read_text()
        if path == Path(__file__) or not _CANDIDATE.search(source):
            continue
        module_name = ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)
        more, bad = problems(source, importlib.import_module(module_name), str(path.relative_to(TESTS.parent)))
        found += more
        wrong += bad
    assert not wrong, "\n".join(wrong)
    # the detector still sees the servers' own tests: it cannot pass by finding nothing
    assert {"tests/test_embedded_planner.py::test_server_starts_on_loopback_reports_its_model_and_stops",
            "tests/test_cli.py::test_sigterm_stops_chat_and_its_embedded_planner_server",
            "tests/test_server_lifetime.py::test_sigkill_of_medagent_stops_the_real_embedded_server",
            "tests/test_vqa_study.py::test_the_vllm_server_answers_with_guided_choices",
            "tests/test_vllm_planner.py::test_the_model_is_recorded_as_served_and_never_substituted"} <= set(found)


SYNTHETIC = '''
import pytest

from tests.vllm_server import TEST_TIMEOUT_S


class EmbeddedLlamaServer:
    pass


def _server():
    return EmbeddedLlamaServer()


@pytest.fixture
def planner(vllm_url):
    return vllm_url


def test_starts_it_through_a_helper():
    _server()


@pytest.mark.llama
def test_marked_demo():
    return ["chat", "--demo"]


def test_plain():
    assert EmbeddedLlamaServer


@pytest.mark.vllm
def test_vllm_through_a_fixture_without_the_timeout(planner):
    pass


@pytest.mark.vllm
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_vllm_with_the_timeout(vllm_url):
    pass
'''


def test_the_guard_catches_an_unmarked_test(tmp_path: Path) -> None:
    path = tmp_path / "test_synthetic.py"
    path.write_text(SYNTHETIC)
    spec = importlib.util.spec_from_file_location("medagent_synthetic_marks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop("medagent_synthetic_marks", None)
    found, wrong = problems(SYNTHETIC, module, "synthetic")
    assert found == ["synthetic::test_starts_it_through_a_helper", "synthetic::test_marked_demo",
                     "synthetic::test_vllm_through_a_fixture_without_the_timeout",
                     "synthetic::test_vllm_with_the_timeout"]
    assert wrong == ["synthetic::test_starts_it_through_a_helper starts the llama.cpp server but is not marked llama",
                     ("synthetic::test_vllm_through_a_fixture_without_the_timeout uses the vLLM server but is not "
                      "marked vllm with timeout(TEST_TIMEOUT_S)")]
