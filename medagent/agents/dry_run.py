"""The ``scripted`` backend: a deterministic planner with no model, for dry runs of chats and studies.

What it does, call by call (``replies`` replace all of it with fixed answers, in order, the last repeating):

- offered tools: it calls, one per turn on the first attached image, the offered tools named in the latest
  user message, else every offered tool that needs nothing but an ``image_id``; then it answers with the
  results it received. ``medagent ask "run assess_image_quality" --backend scripted --image x.png`` calls
  exactly that tool. A named tool's other arguments are the first JSON object in the message, over the
  schema's first valid instance: ``medagent ask 'curb65_score {"age_years": 70, ...}' --backend scripted``.
- a structured reply (a ``response_schema``: the doctor's step, the assessor's rubric): the first valid
  instance of the schema (first choices, minimal lengths), so every role's protocol runs through.
- otherwise: a fixed sentence saying no model answered.

Role-aware keyword baselines (a patient answering from its facts, a doctor picking a label) are
``_target_: medagent.simulators.scripted.scripted_role``; a fixed tool sequence is
``_target_: medagent.agents.scripted.tool_sequence_planner``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.errors import ConfigurationError

NO_MODEL = "No model answered: this is medagent's scripted planner (backend: scripted)."
_MAX_DEPTH = 32  # schemas medagent sends are shallow; a deeper one is a loop through $ref


def schema_example(schema: dict[str, Any]) -> Any:
    """The first instance of ``schema`` in a fixed order: const, first enum value, first anyOf/oneOf
    member, required properties only, the shortest string and array allowed, the smallest number."""
    return _example(schema, schema.get("$defs", {}), 0)


def _example(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ConfigurationError("a response schema nests too deeply for the scripted planner")
    if "$ref" in schema:
        return _example(defs[str(schema["$ref"]).rsplit("/", 1)[-1]], defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example(schema[key][0], defs, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: _example(properties[name], defs, depth + 1)
                for name in schema.get("required", []) if name in properties}
    if kind == "array":
        return [_example(schema.get("items", {}), defs, depth + 1)] * int(schema.get("minItems", 0))
    if kind == "string":
        text = "scripted".ljust(int(schema.get("minLength", 0)), ".")
        return text[: int(schema["maxLength"])] if "maxLength" in schema else text
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else 0)
        return int(low) if kind == "integer" else float(low)
    return False if kind == "boolean" else None


def _question(request: PlannerRequest) -> tuple[int, str]:
    """Index and text of the latest user message (the question being answered)."""
    for index in range(len(request.messages) - 1, -1, -1):
        if request.messages[index]["role"] == "user":
            return index, str(request.messages[index].get("content") or "")
    return 0, ""


def _image_only(tool: dict[str, Any]) -> bool:
    parameters = tool["function"].get("parameters", {})
    return set(parameters.get("required", [])) == {"image_id"}


def _question_object(question: str) -> dict[str, Any]:
    """The first JSON object written in ``question`` (a dry run's tool arguments), or {}."""
    start = question.find("{")
    try:
        found = json.JSONDecoder().raw_decode(question, start)[0] if start >= 0 else {}
    except (ValueError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}


def _arguments(tool: dict[str, Any], question: str, images: list[str]) -> dict[str, Any]:
    parameters = tool["function"].get("parameters", {})
    properties = parameters.get("properties", {})
    arguments = schema_example(parameters) if set(parameters.get("required", [])) != {"image_id"} else {}
    arguments.update({key: value for key, value in _question_object(question).items() if key in properties})
    if "image_id" in properties and images:
        arguments["image_id"] = images[0]
    return arguments


def _names(tool: str, question: str) -> bool:
    """Whether ``question`` names ``tool`` as a whole word: ``sam_segment`` is not named by ``sam_segment_lungs``."""
    return re.search(rf"(?<![A-Za-z0-9_-]){re.escape(tool)}(?![A-Za-z0-9_-])", question) is not None


def _next_call(request: PlannerRequest) -> ScriptResult | None:
    """The next tool call for the current question, or None when every chosen tool has answered."""
    images = request.image_ids()
    if not request.tools:
        return None
    start, question = _question(request)
    named = [tool for tool in request.tools if _names(tool["function"]["name"], question)]
    chosen = named or ([t for t in request.tools if _image_only(t)] if images else [])
    called = {call["function"]["name"] for message in request.messages[start:]
              for call in message.get("tool_calls") or []}
    remaining = [tool for tool in chosen if tool["function"]["name"] not in called]
    if not remaining:
        return None
    return [tool_call(remaining[0]["function"]["name"], _arguments(remaining[0], question, images),
                      call_id=f"call_{len(called)}")]


def scripted_planner(config: PlannerConfig | None = None, *, replies: list[str] | None = None) -> ScriptedPlanner:
    """The ``scripted`` backend (see the module docstring). ``replies``: fixed answers instead, in order
    (the last repeats), e.g. from study YAML
    ``backend: {_target_: medagent.agents.dry_run.scripted_planner, kwargs: {replies: [...]}}``."""
    fixed = list(replies or [])

    def script(request: PlannerRequest) -> ScriptResult:
        if fixed:
            return fixed[min(request.call_index, len(fixed) - 1)]
        if request.response_schema is not None:
            return json.dumps(schema_example(request.response_schema))
        call = _next_call(request)
        if call is not None:
            return call
        start = _question(request)[0]
        results = [str(m.get("content")) for m in request.messages[start:] if m["role"] == "tool"]
        return f"{NO_MODEL} Tool results: {' '.join(results)}" if results else NO_MODEL

    role = config.role if config is not None else "planner"
    return ScriptedPlanner(script, model=f"scripted:{role}", config=config)
