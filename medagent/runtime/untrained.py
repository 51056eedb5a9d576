"""Whether results came from untrained (test-only) weights, for everything a person reads.

``Settings.allow_untrained_test_only`` (``MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY``) builds experts with random
weights when the real ones are missing; their results carry ``provenance.untrained``. Reports, exports,
overlays, run summaries and chat use the helpers here so that such output is never mistaken for a
reading. Studies record an untrained expert's weight hash as :data:`UNTRAINED_WEIGHTS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

UNTRAINED_WEIGHTS = "untrained"
"""The value a run's ``expert_weights`` holds for an expert that ran on random weights."""

NOTICE = ("UNTRAINED: results from random test-only weights (MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY); "
          "they are meaningless and must not be read as findings")


def _provenance_of(item: Any) -> Mapping[str, Any] | None:
    if hasattr(item, "model_dump"):
        item = item.model_dump(mode="json")
    if not isinstance(item, Mapping):
        return None
    nested = item.get("provenance")
    return nested if isinstance(nested, Mapping) else item


def untrained_experts(items: Iterable[Any]) -> list[str]:
    """Names of the experts that ran untrained, in first-seen order. ``items``: provenance dicts or models,
    expert results (anything with a ``provenance``), or tool-call records whose ``output`` holds one."""
    names: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and "output" in item and "tool" in item:
            item = item.get("output")
        provenance = _provenance_of(item)
        if provenance and provenance.get("untrained") and str(provenance.get("expert") or "?") not in names:
            names.append(str(provenance.get("expert") or "?"))
    return names


def answer_is_untrained(answer: Any) -> bool:
    """Whether an agent answer (``medagent.api`` Answer, or its JSON dict) rests on any untrained expert:
    for the chat and ``ask`` output to print :data:`NOTICE` after it."""
    provenance = answer.get("provenance", []) if isinstance(answer, Mapping) else getattr(answer, "provenance", [])
    calls = answer.get("tool_calls", []) if isinstance(answer, Mapping) else getattr(answer, "tool_calls", [])
    return bool(untrained_experts(provenance or []) or untrained_experts(calls or []))


def expert_weights(outputs: Iterable[Any]) -> dict[str, str | None]:
    """What a stored case records from its experts' results: expert name -> weights sha256, or
    :data:`UNTRAINED_WEIGHTS` for random test-only weights, so reports and exports can say so."""
    weights: dict[str, str | None] = {}
    for output in outputs:
        provenance = output.get("provenance") if isinstance(output, Mapping) else None
        if isinstance(provenance, Mapping) and provenance.get("expert"):
            weights[str(provenance["expert"])] = (UNTRAINED_WEIGHTS if provenance.get("untrained")
                                                  else provenance.get("weights_sha256"))
    return weights


def weights_are_untrained(expert_weights: Mapping[str, Any] | None) -> list[str]:
    """The experts a stored case's ``expert_weights`` marks untrained."""
    return [name for name, value in (expert_weights or {}).items() if value == UNTRAINED_WEIGHTS]
