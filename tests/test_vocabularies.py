"""Each vocabulary (roles, dialogue speakers, strategies, case formats, planner backends) is spelled out once:
every other module imports it, so adding a value in one place cannot leave a stale copy elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from medagent.agents.planner import BACKENDS, ROLES
from medagent.dialogue.cases import CASE_FORMATS, TEMPERAMENTS
from medagent.dialogue.protocol import Role as Speaker
from medagent.dialogue.protocol import Strategy

PACKAGE = Path(__file__).resolve().parents[1] / "medagent"
# vocabulary -> (its values, the one module that spells them out)
VOCABULARIES = {
    "roles": (set(ROLES), "agents/planner.py"),
    "backends": (set(BACKENDS), "agents/planner.py"),
    "speakers": (set(get_args(Speaker)), "dialogue/protocol.py"),
    "strategies": (set(get_args(Strategy)), "dialogue/protocol.py"),
    "case formats": (set(CASE_FORMATS), "dialogue/cases.py"),
    "temperaments": (set(TEMPERAMENTS), "dialogue/cases.py"),
}


def _literal_value_sets(tree: ast.AST) -> list[tuple[int, set[str]]]:
    """The string values of every ``Literal[...]`` and every tuple/list/set display of two or more strings."""
    found: list[tuple[int, set[str]]] = []
    for node in ast.walk(tree):
        elements: list[ast.expr] = []
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", "")) == "Literal":
            elements = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            elements = list(node.elts)
        values = {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if len(values) >= 2 and len(values) == len(elements) and (node.lineno, values) not in found:
            found.append((node.lineno, values))  # a Literal's tuple is seen twice: as the Literal and as a tuple
    return found


def test_each_vocabulary_is_spelled_out_in_one_module_only() -> None:
    copies = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for line, values in _literal_value_sets(ast.parse(path.read_text(), relative)):
            for name, (vocabulary, home) in VOCABULARIES.items():
                if relative != home and values <= vocabulary and len(values) >= min(3, len(vocabulary)):
                    copies.append(f"{relative}:{line} copies the {name} {sorted(values)} (import them from {home})")
    assert copies == []


def test_the_check_finds_a_copy(tmp_path: Path) -> None:
    copy = ast.parse('Strategy = Literal["one_shot", "dialogue", "dialogue_with_experts"]\nX = ("a", "b")')
    assert _literal_value_sets(copy) == [(1, set(get_args(Strategy))), (2, {"a", "b"})]
