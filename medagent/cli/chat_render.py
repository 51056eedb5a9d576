"""What the chat prints besides the planner's prose: tool panels, the evidence block, tool readiness.

The evidence block is built from the typed tool results alone, so what the experts found is on screen
whatever the planner made of it. Text that comes from data (DICOM values, index sources) is stripped of
control characters, escaped for console markup and length-capped before it is printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from medagent.cli.terminal import safe, strip_controls
from medagent.errors import MedagentError
from medagent.runtime.untrained import NOTICE, untrained_experts
from medagent.tools.plugin import UnavailableTool

_ARTIFACT_KEYS = ("overlay_id", "overlay_ids", "mask_id", "heatmap_id")
EVIDENCE_CHARS = 300

#: packages a tool imports when it runs (checked without importing them); tools absent here need none

ArtifactPath = Callable[[str], Path | None]


def plain(text: object, limit: int = EVIDENCE_CHARS) -> str:
    """Data text made safe for a terminal: one line, no control sequences or characters, capped."""
    flat = strip_controls(str(text).replace("\r", " ").replace("\n", " ").replace("\t", " "))
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def clean(text: object, limit: int = EVIDENCE_CHARS) -> str:
    """:func:`plain`, and no console markup either."""
    return escape(plain(text, limit))


def tool_status(tool: Any) -> tuple[bool, str]:
    """(ready, why) of a registered tool: its weights or index; nothing is loaded."""
    if not tool.ready():
        if tool.name in ("search_reports", "find_similar_images"):
            return False, "no index yet (medagent index build)"
        return False, "weights missing (medagent experts list says where they go)"
    return True, "ready"


def tools_lines(tools: list[Any], offered: set[str], unavailable: Sequence[UnavailableTool] = ()) -> list[str]:
    """One line per registered tool: ready or why not, and whether it is offered for the attached images; then
    one per tool that cannot be offered here (a missing package, a broken plugin) with how to fix it."""
    lines = []
    for tool in tools:
        ready, why = tool_status(tool)
        mark = "[green]ready[/]" if ready else f"[red]not ready[/]: {escape(why)}"
        suits = ("offered for the attached images" if tool.name in offered
                 else "not offered (no attached image suits it)" if ready else "")
        lines.append(f"[bold]{tool.name}[/] {mark}" + (f" · {suits}" if suits else "")
                     + f"\n    [dim]{escape(tool.description)}[/]")
    for item in unavailable:
        hint = f" ({item.hint})" if item.hint else ""
        lines.append(f"[bold]{clean(item.name, 80)}[/] [red]not ready[/]: {clean(item.reason + hint)}")
    return lines


def artifact_ids(output: Any) -> Iterator[tuple[str, str]]:
    """(kind, id) of every artifact a tool output names (overlays, masks, heatmaps), depth-first."""
    if isinstance(output, dict):
        for key, value in output.items():
            if key in _ARTIFACT_KEYS and value:
                kind = key.removesuffix("_ids").removesuffix("_id")
                for item in value if isinstance(value, list) else [value]:
                    yield kind, str(item)
            elif isinstance(value, dict | list):
                yield from artifact_ids(value)
    elif isinstance(output, list):
        for item in output:
            yield from artifact_ids(item)


def artifact_lines(output: Any, locate: ArtifactPath) -> list[str]:
    lines = []
    for kind, artifact_id in artifact_ids(output):
        path = locate(artifact_id)
        lines.append(f"{kind}: {escape(str(path)) if path else clean(artifact_id, 80)}")
    return lines


def summary(tool: str, output: dict[str, Any], summarise: Callable[[str, dict[str, Any]], str | None]) -> str:
    """The typed result's own one-sentence summary; its top-level numbers when it has none."""
    text = summarise(tool, output)
    if not text:
        scalars = {k: v for k, v in output.items() if isinstance(v, int | float | bool) and k != "duration_s"}
        text = ", ".join(f"{k} {round(v, 3) if isinstance(v, float) else v}" for k, v in list(scalars.items())[:6])
    return clean(text or "no summary")


def evidence_lines(records: list[dict[str, Any]], locate: ArtifactPath,
                   summarise: Callable[[str, dict[str, Any]], str | None]) -> list[str]:
    """The compact evidence block: one line per tool call of the answer, then the files it wrote."""
    lines = []
    for record in records:
        name = clean(record.get("tool"), 64)
        if record.get("ok"):
            output = record.get("output") or {}
            untrained = " [red](UNTRAINED test weights)[/]" if (output.get("provenance") or {}).get("untrained") else ""
            lines.append(f"  [green]{name}[/]{untrained}: {summary(str(record.get('tool')), output, summarise)}")
            lines += [f"    {line}" for line in artifact_lines(output, locate)]
        else:
            error = record.get("error") or {}
            lines.append(f"  [yellow]{name}[/]: {clean(error.get('code'), 64)} - {clean(error.get('message'))}")
    return lines


def tool_panel(data: dict[str, Any], locate: ArtifactPath) -> Panel:
    arguments = data.get("arguments")  # a call record's JSON object; shown as the JSON the planner sent
    shown_arguments = json.dumps(arguments) if isinstance(arguments, dict) else arguments
    lines = [f"arguments: {clean(shown_arguments)}", f"time: {data.get('duration_s', 0):.2f} s"]
    if data.get("ok"):
        output = data["output"]
        shown = {k: v for k, v in output.items() if k not in ("provenance", "measures")}
        lines.append(clean(json.dumps(shown), 400))
        lines += artifact_lines(output, locate)
        if (output.get("provenance") or {}).get("untrained"):
            lines.append("[red]UNTRAINED test weights[/]")
    else:
        error = data.get("error", {})
        lines.append(f"[yellow]{clean(error.get('code'), 64)}[/]: {clean(error.get('message'))}")
        if error.get("family") == "retry":
            lines.append("[dim]the planner is told what was wrong and may correct the call[/]")
    return Panel("\n".join(lines), title=f"tool {clean(data.get('tool'), 64)}", expand=False)


class Screen:
    """Prints a turn's events for one agent: panels, prose, then the evidence block from the typed results."""

    def __init__(self, agent: Any, console: Console, errors: Console) -> None:
        self.agent = agent
        self.console = console
        self.errors = errors

    def locate(self, artifact_id: str) -> Path | None:
        try:
            return Path(self.agent.toolbox.store.get(artifact_id).path)
        except MedagentError:
            return None

    def summarise(self, tool: str, output: dict[str, Any]) -> str | None:
        registry = self.agent.toolbox.registry
        try:
            typed = registry.get(tool).output_model.model_validate(output)
        except (MedagentError, ValueError):  # an unknown tool, or an output its model no longer reads
            return None
        return typed.summary_text() if hasattr(typed, "summary_text") else None

    def panel(self, data: dict[str, Any]) -> None:
        self.console.print(tool_panel(data, self.locate))

    def answer(self, text: str | None, records: list[dict[str, Any]], model: str | None, *, streamed: bool) -> None:
        if not streamed and text:
            self.console.print(safe(text))  # paragraphs kept; no escape codes, no markup
        if records:
            self.console.print("\n[bold]evidence[/] [dim](typed tool results, as the experts returned them)[/]")
            for line in evidence_lines(records, self.locate, self.summarise):
                self.console.print(line, soft_wrap=True)
            if untrained_experts(records):
                self.console.print(f"[bold red]{escape(NOTICE)}[/]", soft_wrap=True)
        self.console.print(f"\n[dim]planner {clean(model, 120)}[/]")

    async def stream(self, events: Any) -> dict[str, Any] | None:
        """Render events; return a pending approval request, if any."""
        streaming = False
        async for event in events:
            if event.kind == "token":
                self.console.print(safe(event.data["text"]), end="", soft_wrap=True)  # no escape codes, no markup
                streaming = True
            elif event.kind == "tool_finished":
                self.panel(event.data)
            elif event.kind == "approval_requested":
                return event.data
            elif event.kind == "error":
                self.errors.print(f"[red]error[/] {event.data['code']}: {clean(event.data['message'])}", soft_wrap=True)
            elif event.kind == "answer":
                self.answer(event.data.get("text"), event.data.get("tool_calls") or [], event.data.get("model"),
                            streamed=streaming)
        return None
