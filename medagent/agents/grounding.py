"""Does an answer use the tool results it was given? A falsifiable check for tests and benchmarks."""

from __future__ import annotations

import json
import re
from typing import Any

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _numbers(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_numbers(item) for key, item in value.items() if key != "provenance"), set())
    if isinstance(value, list):
        return set().union(*(_numbers(item) for item in value), set())
    if isinstance(value, bool):
        return set()
    if isinstance(value, (int, float)):
        return {f"{value:g}"} if isinstance(value, float) else {str(value)}
    if isinstance(value, str):
        return set(_NUMBER.findall(value))
    return set()


def answer_uses_results(answer: str | None, tool_calls: list[dict[str, Any]], question: str = "") -> bool:
    """True when the answer (prose, not JSON) names a tool that succeeded or repeats a number (two digits or
    more) from its output that the question did not contain."""
    if not answer:
        return False
    try:
        json.loads(answer)
        return False  # an echoed tool call or raw JSON is not an answer
    except ValueError:
        pass
    succeeded = [call for call in tool_calls if call.get("ok")]
    if any(call["tool"] in answer for call in succeeded):
        return True
    in_answer = set(_NUMBER.findall(answer)) - set(_NUMBER.findall(question))
    from_results = set().union(*(_numbers(call.get("output", {})) for call in succeeded), set())
    return any(len(number.replace(".", "")) >= 2 and number in from_results for number in in_answer)
