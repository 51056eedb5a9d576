"""Tool schemas in the subset every constrained-decoding backend compiles.

A planner server turns each offered schema into a grammar: llama.cpp's json-schema-to-grammar (the
embedded server), xgrammar, guidance or outlines (vLLM). They disagree on everything beyond plain
JSON structure: llama.cpp expands ``maxLength: 2000`` into 2,000 nested optional rules its grammar
parser refuses, asserts on unanchored ``pattern``s, ignores numeric bounds; xgrammar rejects some
formats and bounds that guidance accepts. One refused schema fails every request that offers it.

So the schema a planner sees keeps structure only (types, properties, required, enums, constants,
items, unions); a small integer range becomes an enum of its values; every other bound moves into the
field's description, where the model still reads it, and
the pydantic input model enforces it when the call is validated (an out-of-bound value earns the
planner a corrective retry, never a silent acceptance). ``$ref``/``$defs`` are inlined, ``oneOf``
becomes ``anyOf`` and single-member ``allOf`` is merged, since not every backend resolves them.
"""

from __future__ import annotations

import json
from typing import Any

from medagent.errors import ConfigurationError

# structure every backend compiles; ``additionalProperties`` may be a bool or a schema
_STRUCTURE = ("type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
              "anyOf")
_MAX_DESCRIPTION = 600
_MAX_ENUMERATED = 32  # a bounded integer field with at most this many values is offered as an enum


class UnsupportedToolSchema(ConfigurationError):
    """A tool's input schema cannot be offered to planners (recursive, or an ``allOf`` of several parts)."""

    code = "unsupported_tool_schema"


def _bounds_text(node: dict[str, Any]) -> str:
    """The bounds a grammar will not carry, as words for the field's description."""
    words = []
    low, high = node.get("minLength"), node.get("maxLength")
    if low is not None or high is not None:
        words.append(f"{low or 0} to {high} characters" if high is not None else f"at least {low} characters")
    low, high = node.get("minItems"), node.get("maxItems")
    if low or high is not None:
        words.append(f"{low or 0} to {high} items" if high is not None else f"at least {low} items")
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            words.append(f"{word} {node[key]:g}" if isinstance(node[key], int | float) else f"{word} {node[key]}")
    if "multipleOf" in node:
        words.append(f"a multiple of {node['multipleOf']}")
    if "pattern" in node:
        words.append(f"matching /{node['pattern']}/")
    if "format" in node:
        words.append(f"format {node['format']}")
    if node.get("uniqueItems"):
        words.append("no repeats")
    if "default" in node:
        words.append(f"default {json.dumps(node['default'], default=str)}")
    return ", ".join(words)


def _integer_range(node: dict[str, Any]) -> list[int] | None:
    """The values of a bounded integer field with at most ``_MAX_ENUMERATED`` of them, else None.

    Every backend compiles an enum, so a small range is offered as one: a small model that reads
    "<= 20" in a description still writes 50; an enum cannot be written wrong."""
    if node.get("type") != "integer" or "multipleOf" in node:
        return None
    low = node.get("minimum", node["exclusiveMinimum"] + 1 if "exclusiveMinimum" in node else None)
    high = node.get("maximum", node["exclusiveMaximum"] - 1 if "exclusiveMaximum" in node else None)
    if not isinstance(low, int) or not isinstance(high, int) or not 0 <= high - low < _MAX_ENUMERATED:
        return None
    return list(range(low, high + 1))


def _resolve(ref: str, defs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix):] not in defs:
        raise UnsupportedToolSchema(f"tool schema reference {ref[:80]!r} does not point into its own $defs")
    return ref[len(prefix):], defs[ref[len(prefix):]]


def _normalise(node: Any, defs: dict[str, Any], stack: tuple[str, ...]) -> Any:
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        name, target = _resolve(node.pop("$ref"), defs)
        if name in stack:
            raise UnsupportedToolSchema(f"tool schema {name!r} is recursive; planners need a finite schema")
        # siblings of a $ref (a field's description, default) win over the definition's own
        node = {**target, **node, "description": node.get("description") or target.get("description")}
        return _normalise(node, defs, (*stack, name))
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise UnsupportedToolSchema("tool schemas with an allOf of several parts cannot be offered to planners")
        return _normalise({**parts[0], **node}, defs, stack)
    if "oneOf" in node:
        node["anyOf"] = node.pop("oneOf")
    out: dict[str, Any] = {}
    for key in _STRUCTURE:
        if key not in node:
            continue
        value = node[key]
        if key == "properties":
            out[key] = {name: _normalise(item, defs, stack) for name, item in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _normalise(value, defs, stack)
        elif key in ("anyOf", "prefixItems"):
            out[key] = [_normalise(item, defs, stack) for item in value]
        else:
            out[key] = value
    small_range = _integer_range(node)
    if small_range is not None and "enum" not in out:
        out["enum"] = small_range  # a bound the grammar can carry: valid by construction, not by a retry
    if len(out.get("anyOf", [])) == 1 and set(out) == {"anyOf"}:
        out = out["anyOf"][0]
    text, bounds = str(node.get("description") or "").strip(), _bounds_text(node)
    text = f"{text} ({bounds})" if text and bounds else text or bounds
    if text:
        out["description"] = text[:_MAX_DESCRIPTION]
    return out


def planner_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` that every supported backend compiles (see the module docstring).

    Idempotent; raises :class:`UnsupportedToolSchema` for a schema no backend subset can express."""
    return _normalise({k: v for k, v in schema.items() if k != "$defs"}, schema.get("$defs", {}), ())
