"""``medagent experts list``: the built-in experts, the tools of installed plugins and your own, and what
cannot be offered here (a missing package, a plugin that failed to import) with how to fix it."""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import entry_points
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from medagent.cli.terminal import safe
from medagent.errors import MedagentError, MissingDependency
from medagent.families.registry import CARD_SOURCE

console = Console()


def _modalities(card: Any) -> list[str] | str:
    return [m.value for m in card.modalities] if card.modalities else "any"


def _expert_row(expert: Any) -> dict[str, Any] | None:
    try:
        status = expert.weights_status()  # some experts ask their library for the file name
    except MissingDependency:
        return None  # its tools are listed as unavailable, with the install command
    except MedagentError as exc:  # e.g. weights named wrong in the settings: say so, list the rest
        return {"name": expert.name, "kind": "expert", "source": "builtin", "available": False,
                "reason": f"{exc.code}: {exc.message}", "hint": None}
    return {"name": expert.name, "kind": "expert", "source": "builtin", "available": True,
            "summary": expert.card.summary, "device": expert.device, "modalities": _modalities(expert.card),
            "weights": status.model_dump(exclude_none=True)}


def _package(plugin: str) -> str | None:
    """The distribution (what ``pip install`` named) that provides entry point ``plugin``."""
    from medagent.tools.plugin import ENTRY_POINT_GROUP

    for point in entry_points(group=ENTRY_POINT_GROUP, name=plugin):
        return point.dist.name if point.dist is not None else None
    return None


def _plugin_fields(plugin: str | None) -> dict[str, Any]:
    return {"plugin": plugin, "package": _package(plugin)} if plugin else {}


def _tool_row(tool: Any, source: str, plugin: str | None) -> dict[str, Any]:
    """A tool that is not a built-in one. ``expert_tool`` hands the expert's own ``ready`` to the tool, so an
    expert's weights (present, or where to put them) are shown; a plain function tool needs none."""
    from medagent.runtime.expert import Expert

    row = {"name": tool.name, "kind": "tool", "source": source, "available": True, "summary": tool.card.summary,
           "modalities": _modalities(tool.card)} | _plugin_fields(plugin)
    expert = getattr(tool.ready, "__self__", None)
    try:
        if isinstance(expert, Expert):
            weights = expert.weights_status().model_dump(exclude_none=True)
            if not weights["present"] and tool.ready():
                weights["untrained"] = True  # MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY: random weights stand in
            return row | {"device": expert.device, "weights": weights}
        return row | {"device": "cpu", "weights": {"present": bool(tool.ready()), "weightless": True}}
    except Exception as exc:  # noqa: BLE001 - a tool that cannot say whether it is ready is listed so, not fatal
        return row | {"available": False, "reason": f"its readiness check failed ({type(exc).__name__})",
                      "hint": f"report it to {'the plugin ' + plugin if plugin else 'its author'}"}


def rows(toolbox: Any) -> list[dict[str, Any]]:
    """One JSON-ready row per built-in expert and retriever, per plugin or user tool, and per tool or plugin
    that is unavailable here (``available: false`` with ``reason`` and ``hint``)."""
    from medagent.tools.builtin import builtin_tools

    found = [row for row in map(_expert_row, toolbox.experts.all()) if row is not None]
    for retriever in (toolbox.experts.text_retriever, toolbox.experts.image_retriever):
        if retriever is None:
            continue
        present = retriever.ready()
        found.append({"name": f"{retriever.query_kind}_retriever", "kind": "retriever", "source": "builtin",
                      "available": True, "device": "cpu", "modalities": "any",
                      "summary": f"Finds similar {retriever.query_kind} records in a persisted vector index.",
                      "weights": {"present": present, "path": str(retriever.index_dir) if present else None,
                                  "expected_path": f"{retriever.index_dir} (build it: medagent index build)"}})
    builtin = {tool.name for tool in builtin_tools(toolbox.experts)}
    for tool in toolbox.registry.tools():
        if tool.name in builtin:
            continue
        plugin = toolbox.plugin_tools.get(tool.name)
        if plugin and plugin.startswith(CARD_SOURCE):  # a family card's instance: named by its card file
            found.append(_tool_row(tool, "card", None) | {"card": plugin.removeprefix(CARD_SOURCE)})
        else:
            found.append(_tool_row(tool, "plugin" if plugin else "user", plugin))
    for item in toolbox.unavailable:
        row = {"name": item.name, "kind": "tool", "available": False, "reason": item.reason, "hint": item.hint}
        if item.source == "builtin":
            found.append(row | {"source": "builtin"})
        elif item.source.startswith(CARD_SOURCE):
            found.append(row | {"source": "card", "card": item.source.removeprefix(CARD_SOURCE)})
        else:
            found.append(row | {"source": "plugin"} | _plugin_fields(item.source))
    return found


def _weights_text(row: dict[str, Any]) -> str:
    weights = row["weights"]
    if weights.get("weightless"):
        return "none needed"
    if weights["present"]:
        return f"[green]present[/] {safe(weights['path'])}"
    if weights.get("untrained"):
        return f"[yellow]UNTRAINED test weights[/] (missing: {safe(weights['expected_path'])})"
    return f"[red]missing[/]: put {safe(weights['expected_path'])}"


def _origin(row: dict[str, Any]) -> str:
    if row.get("card"):
        return f"card {row['card']}"
    return f"plugin {row.get('package') or row['plugin']}" if row.get("plugin") else row["source"]


def _print(found: list[dict[str, Any]]) -> None:
    table = Table(title="medagent experts and tools")
    for column in ("name", "from", "accepts", "weights", "device", "what it does"):
        table.add_column(column, overflow="fold")
    for row in (row for row in found if row["available"]):
        origin = _origin(row)
        accepts = row["modalities"] if isinstance(row["modalities"], str) else ", ".join(row["modalities"])
        table.add_row(safe(row["name"]), safe(origin), safe(accepts), _weights_text(row), safe(row["device"]),
                      safe(row["summary"]))
    console.print(table)
    unavailable = [row for row in found if not row["available"]]
    if not unavailable:
        return
    missing = Table(title="unavailable here (the rest work)")
    for column in ("name", "from", "why", "to fix"):
        missing.add_column(column, overflow="fold")
    for row in unavailable:
        origin = _origin(row)
        missing.add_row(safe(row["name"]), safe(origin), f"[red]{safe(row['reason'])}[/]", safe(row["hint"] or ""))
    console.print(missing)


def experts_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each expert and tool: what it does, where it comes from (built in, a plugin, yours), its weights (present or
    missing, and where), its device; then what is unavailable here and how to make it available."""
    from medagent.assembly import Assembly

    root = Assembly()  # the toolbox every command uses: built-ins, installed plugins; nothing is loaded
    try:
        found = rows(root.toolbox)
    finally:
        asyncio.run(root.aclose())
    if as_json:
        console.print_json(json.dumps(found))
        return
    _print(found)
