"""``medagent ask`` and ``medagent chat``: thin faces over :mod:`medagent.api`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from medagent.cli.terminal import safe
from medagent.errors import MedagentError

console = Console()
errors = Console(stderr=True)

DEMO_QUESTION = "Is this image of usable quality, and what does its DICOM header say about the acquisition?"

EndpointOption = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (vLLM etc.); default: embedded")]
ModelOption = Annotated[str | None, typer.Option(help="Model id as served at the endpoint.")]
ImageOption = Annotated[list[Path] | None, typer.Option("--image", help="Attach an image (repeatable).")]
ModalityOption = Annotated[str | None, typer.Option(help="Declare the modality of PNG/JPEG/NIfTI images.")]
SessionOption = Annotated[str | None, typer.Option("--session", help="Resume a session by id.")]


def _agent(endpoint: str | None, model: str | None) -> Any:
    from medagent.agents.planner import PlannerConfig
    from medagent.api import Agent, AgentConfig

    return Agent(AgentConfig(planner=PlannerConfig(endpoint=endpoint, model=model)))


def _tool_panel(data: dict[str, Any]) -> Panel:
    lines = [f"arguments: {escape(str(data.get('arguments')))}", f"time: {data.get('duration_s', 0):.2f} s"]
    if data.get("ok"):
        output = data["output"]
        summary = {k: v for k, v in output.items() if k not in ("provenance", "measures")}
        lines.append(escape(json.dumps(summary)[:400]))
        if output.get("overlay_id"):
            lines.append(f"overlay artifact: {output['overlay_id']}")
        if output.get("provenance", {}).get("untrained"):
            lines.append("[red]UNTRAINED test weights[/]")
    else:
        error = data.get("error", {})
        lines.append(f"[yellow]{error.get('code')}[/]: {escape(str(error.get('message')))}")
    return Panel("\n".join(lines), title=f"tool {data['tool']}", expand=False)


async def _stream(events: Any) -> dict[str, Any] | None:
    """Render events; return a pending approval request, if any."""
    streaming = False
    async for event in events:
        if event.kind == "token":
            console.print(safe(event.data["text"]), end="", soft_wrap=True)
            streaming = True
        elif event.kind == "tool_finished":
            console.print(_tool_panel(event.data))
        elif event.kind == "approval_requested":
            return event.data
        elif event.kind == "error":
            errors.print(f"[red]error[/] {event.data['code']}: {escape(event.data['message'])}", soft_wrap=True)
        elif event.kind == "answer":
            if not streaming and event.data.get("text"):
                console.print(safe(event.data["text"]))
            console.print(f"\n[dim]planner {event.data.get('model')}[/]")
    return None


async def _ask(question: str, images: list[Path], modality: str | None, endpoint: str | None, model: str | None,
               session_id: str | None) -> dict[str, Any]:
    async with _agent(endpoint, model) as agent:
        session = agent.session(session_id)
        for image in images:
            await session.attach(image, modality)
        answer = await session.ask(question)
        return answer.model_dump(mode="json") | {"provenance": answer.provenance}


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    image: ImageOption = None,
    modality: ModalityOption = None,
    endpoint: EndpointOption = None,
    model: ModelOption = None,
    session: SessionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer, tool trace and provenance as JSON.")] = False,
) -> None:
    """Ask one question about the attached images and print the answer."""
    try:
        result = asyncio.run(_ask(question, image or [], modality, endpoint, model, session))
    except MedagentError as exc:
        errors.print(f"[red]error[/] {exc.code}: {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    for call in result["tool_calls"]:
        console.print(_tool_panel(call))
    console.print(safe(result["text"] or ""))  # no escape codes, no markup
    console.print(f"[dim]session {result['session_id']} · planner {result['model']}[/]")


async def _chat(images: list[Path], modality: str | None, endpoint: str | None, model: str | None,
                session_id: str | None, demo: bool) -> None:
    interactive = sys.stdin.isatty()
    async with _agent(endpoint, model) as agent:
        session = agent.session(session_id)
        if demo:
            import pydicom.examples

            images = [*images, Path(pydicom.examples.get_path("ct"))]
        for image in images:
            artifact = await session.attach(image, modality)
            console.print(f"attached {artifact.id}: {artifact.metadata['summary']['modality']}")
        # a remote planner is checked now; the embedded one is still starting and is named with its first answer
        planner_name = await agent.planner.served_model() if agent.config.planner.endpoint else "embedded (starting)"
        console.print(f"[dim]session {session.id} · planner {planner_name} · /attach FILE, /tools, /history, /quit[/]")
        if demo and not interactive:
            console.print(f"[bold]you[/]: {DEMO_QUESTION}")
            await _turn(session, DEMO_QUESTION)
            return
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not interactive and not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line.startswith("/attach "):
                try:
                    artifact = await session.attach(Path(line.removeprefix("/attach ").strip()), modality)
                    console.print(f"attached {artifact.id}")
                except MedagentError as exc:
                    errors.print(f"[red]error[/] {exc.code}: {escape(exc.message)}", soft_wrap=True)
            elif line == "/tools":
                for tool in agent.toolbox.registry.tools():
                    console.print(f"[bold]{tool.name}[/]: {escape(tool.description)}")
            elif line == "/history":
                for message in await session.history():
                    console.print(f"[dim]{message['role']}[/]: {escape(str(message.get('content'))[:300])}")
            else:
                await _turn(session, line)


async def _turn(session: Any, question: str) -> None:
    pending = await _stream(session.events(question))
    while pending is not None:
        decision = await asyncio.to_thread(input, f"approve {pending['tool']} {pending['arguments']}? [y/N] ")
        pending = await _stream(session.resume(decision.strip().lower() in ("y", "yes")))


def chat(
    image: ImageOption = None,
    modality: ModalityOption = None,
    endpoint: EndpointOption = None,
    model: ModelOption = None,
    session: SessionOption = None,
    demo: Annotated[bool, typer.Option(help="Attach pydicom's example CT; without a terminal, ask one question.")] = False,
    as_patient: Annotated[str | None, typer.Option(
        "--as-patient", help="You are the doctor; a simulated patient plays this case id.")] = None,
    human_patient: Annotated[bool, typer.Option(
        "--human-patient", help="You are the patient; the planner is the doctor.")] = False,
    cases: Annotated[Path | None, typer.Option(
        "--cases", help="Case file for --as-patient (AgentClinic JSONL, 3MDBench, medagent); default: built-in.")] = None,
    temperament: Annotated[str | None, typer.Option(help="The simulated patient's temperament.")] = None,
    bias: Annotated[list[str] | None, typer.Option("--bias", help="A patient bias (repeatable).")] = None,
    max_turns: Annotated[int, typer.Option(min=1, help="Doctor turns in a consultation.")] = 10,
) -> None:
    """Chat with the planner about attached images; tool calls are shown as they run.

    Consultations: --as-patient CASE (you play the doctor) or --human-patient (you play the patient)."""
    try:
        if as_patient is not None or human_patient:
            from medagent.cli.consult import consult

            if as_patient is not None and human_patient:
                errors.print("[red]error[/] choose --as-patient CASE or --human-patient, not both")
                raise typer.Exit(code=2)
            asyncio.run(consult(case_id=as_patient, human_patient=human_patient, cases_file=cases,
                                temperament=temperament, biases=bias or [], max_turns=max_turns,
                                endpoint=endpoint, model=model))
            return
        asyncio.run(_chat(image or [], modality, endpoint, model, session, demo))
    except MedagentError as exc:
        errors.print(f"[red]error[/] {exc.code}: {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(code=2) from None
