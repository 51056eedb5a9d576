"""``medagent ask`` and ``medagent chat``: thin faces over :mod:`medagent.api`."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
from rich.console import Console
from rich.markup import escape

from medagent.agents.planner import BackendChoice
from medagent.cli.chat_render import Screen, clean, plain, tools_lines
from medagent.errors import MedagentError

console = Console()
errors = Console(stderr=True)

DEMO_QUESTION = "Is this image of usable quality, and what does its DICOM header say about the acquisition?"
COMMANDS = "/attach FILE [--modality X], /tools, /history, /quit"
CONNECT_HINT = ("connect a served model with one flag, --endpoint URL (medagent planner serve MODEL prints the "
                "server command; add --model NAME if the server serves several)")

EndpointOption = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (vLLM etc.); default: embedded")]
ModelOption = Annotated[str | None, typer.Option(help="Model id as served at the endpoint.")]
BackendOption = Annotated[BackendChoice, typer.Option(
    help="The planner: openai (a served model at --endpoint), embedded (llama.cpp, offline), scripted (no model: "
         "calls the offered tools the question names, else each image tool once; a dry run), or auto "
         "(openai with an endpoint, else embedded).")]
ImageOption = Annotated[list[Path] | None, typer.Option("--image", help="Attach an image (repeatable).")]
ModalityOption = Annotated[str | None, typer.Option(help="Declare the modality of PNG/JPEG/NIfTI images.")]
SessionOption = Annotated[str | None, typer.Option("--session", help="Resume a session by id.")]


def planner_config(endpoint: str | None, model: str | None, backend: BackendChoice, role: str = "planner") -> Any:
    """The planner ``--backend``, ``--endpoint`` and ``--model`` describe (a mismatch is a typed error)."""
    from medagent.agents.factory import backend_problem
    from medagent.agents.planner import PlannerConfig
    from medagent.errors import BackendConflict

    config = PlannerConfig.model_validate({"role": role, "endpoint": endpoint, "model": model, "backend": backend})
    problem = backend_problem(config)
    if problem is not None:
        raise BackendConflict(f"--backend {backend}: {problem}")
    return config


def _agent(endpoint: str | None, model: str | None, backend: BackendChoice) -> Any:
    from medagent.api import Agent, AgentConfig

    return Agent(AgentConfig(planner=planner_config(endpoint, model, backend)))


class PacsRequest(NamedTuple):
    """``--dicomweb URL --study UID [--series UID] [--push]``."""

    url: str
    study: str
    series: str | None
    push: bool


async def _ask(question: str, images: list[Path], modality: str | None, endpoint: str | None, model: str | None,
               backend: BackendChoice, session_id: str | None, as_json: bool, pacs: PacsRequest | None = None) -> None:
    async with _agent(endpoint, model, backend) as agent:
        session = agent.session(session_id)
        for image in images:
            await session.attach(image, modality)
        pull = None
        if pacs is not None:
            from medagent.dicomweb import pull_study

            pull = await pull_study(session, pacs.url, pacs.study, pacs.series)
            if not as_json:
                console.print(f"pulled {len(pull.images)} image(s) from DICOMweb: "
                              f"{', '.join(image.image_id for image in pull.images)}")
        answer = await session.ask(question)
        pushed = None
        if pacs is not None and pacs.push and pull is not None:
            from medagent.dicomweb import push_results

            pushed = await push_results(pull, answer.tool_calls, agent.toolbox.store)
        if as_json:
            result = answer.model_dump(mode="json") | {"provenance": answer.provenance}
            if pull is not None:
                result["dicomweb"] = {"images": pull.image_ids, "skipped_instances": pull.skipped_instances,
                                      "stored": None if pushed is None else {"segmentations": pushed.segmentations,
                                                                             "reports": pushed.reports}}
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return
        screen = Screen(agent, console, errors)
        for call in answer.tool_calls:
            screen.panel(call)
        screen.answer(answer.text, answer.tool_calls, answer.model, streamed=False)
        if pushed is not None:
            console.print(f"stored on the DICOMweb server: {len(pushed.segmentations)} SEG, {len(pushed.reports)} SR")
        console.print(f"[dim]session {session.id}[/]")


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    image: ImageOption = None,
    modality: ModalityOption = None,
    endpoint: EndpointOption = None,
    model: ModelOption = None,
    backend: BackendOption = "auto",
    session: SessionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer, tool trace and provenance as JSON.")] = False,
    dicomweb: Annotated[str | None, typer.Option(
        "--dicomweb", help="DICOMweb base URL of a PACS (e.g. http://host:8042/dicom-web): pull --study from it "
        "(QIDO-RS, WADO-RS), de-identified on arrival.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID to pull (with --dicomweb).")] = None,
    series: Annotated[str | None, typer.Option("--series", help="Only this Series Instance UID of the study.")] = None,
    push: Annotated[bool, typer.Option("--push", help="Store the results back on the DICOMweb server (STOW-RS): "
                                       "masks as DICOM SEG, findings as a DICOM SR.")] = False,
) -> None:
    """Ask one question about the attached images and print the answer."""
    if (dicomweb is None) != (study is None) or ((series is not None or push) and dicomweb is None):
        errors.print("[red]error[/] --dicomweb URL and --study UID go together (--series and --push need both)")
        raise typer.Exit(code=2)
    pacs = PacsRequest(dicomweb, study, series, push) if dicomweb is not None and study is not None else None
    try:
        asyncio.run(_ask(question, image or [], modality, endpoint, model, backend, session, as_json, pacs))
    except MedagentError as exc:
        errors.print(f"[red]error[/] {exc.code}: {clean(exc.message)}", soft_wrap=True)
        raise typer.Exit(code=2) from None


def parse_attach(arguments: str) -> tuple[Path, str | None]:
    """``FILE [--modality X]`` (quotes for paths with spaces); ValueError with the usage otherwise."""
    usage = "usage: /attach FILE [--modality X]"
    try:
        words = shlex.split(arguments)
    except ValueError:
        raise ValueError(f"unbalanced quotes; {usage}") from None
    files: list[str] = []
    modality: str | None = None
    while words:
        word = words.pop(0)
        if word == "--modality":
            if not words:
                raise ValueError(f"--modality needs a value (e.g. DX, CT); {usage}")
            modality = words.pop(0)
        elif word.startswith("--modality="):
            modality = word.removeprefix("--modality=")
        elif word.startswith("--"):
            raise ValueError(f"unknown option {clean(word, 40)}; {usage}")
        else:
            files.append(word)
    if len(files) != 1:
        raise ValueError(f"name one file; {usage}")
    return Path(files[0]), modality


def _planner_banner(agent: Any, planner_name: str | None) -> str:
    from medagent.agents.factory import resolve_backend

    config = agent.config.planner
    if resolve_backend(config) == "scripted":
        return "[yellow]planner: scripted, no model (a dry run of the tools); " + escape(CONNECT_HINT) + "[/]"
    if resolve_backend(config) == "embedded" and config.gguf_path is None:
        from medagent.agents.embedded import SERVED_NAME

        return (f"[yellow]planner: {SERVED_NAME}, the small embedded demo model: it shows the machinery, its "
                f"answers are not a clinical reading; {escape(CONNECT_HINT)}[/]")
    return f"planner {clean(planner_name or config.gguf_path, 120)}"


async def _list_images(session: Any, agent: Any) -> None:
    """A resumed session: the images it already holds, so the user knows what the planner can see."""
    known = (await session.state()).get("image_ids", [])
    if not known:
        return
    console.print(f"session {session.id} resumed with {len(known)} image(s):")
    for image_id in known:
        try:
            summary = agent.toolbox.image_summaries([image_id])[image_id]
        except MedagentError:
            console.print(f"  {clean(image_id, 80)}: [red]no longer in the artifact store[/]")
            continue
        shape = "x".join(str(extent) for extent in summary.get("shape", []))
        console.print(f"  {clean(image_id, 80)}: {clean(summary.get('modality'), 20)} "
                      f"{clean(summary.get('format', ''), 20)} {shape}")


async def _attach_command(session: Any, arguments: str, default_modality: str | None) -> None:
    try:
        path, modality = parse_attach(arguments)
    except ValueError as exc:
        errors.print(f"[red]error[/] {escape(str(exc))}", soft_wrap=True)
        return
    try:
        artifact = await session.attach(path, modality or default_modality)
    except MedagentError as exc:
        errors.print(f"[red]error[/] {exc.code}: {clean(exc.message)}", soft_wrap=True)
        return
    console.print(f"attached {artifact.id}: {clean(artifact.metadata['summary']['modality'], 20)}")


async def _tools_command(agent: Any, session: Any) -> None:
    toolbox = agent.toolbox
    offered = set(toolbox.offered_tools(toolbox.image_summaries(await session.image_ids())))
    for line in tools_lines(toolbox.registry.tools(), offered, toolbox.unavailable):
        console.print(line, soft_wrap=True)


async def _chat(images: list[Path], modality: str | None, endpoint: str | None, model: str | None,
                backend: BackendChoice, session_id: str | None, demo: bool) -> None:
    from medagent.agents.factory import resolve_backend

    interactive = sys.stdin.isatty()
    async with _agent(endpoint, model, backend) as agent:
        session = agent.session(session_id)
        if session_id is not None:
            await _list_images(session, agent)
        if demo:
            import pydicom.examples

            images = [*images, Path(pydicom.examples.get_path("ct"))]
        for image in images:
            artifact = await session.attach(image, modality)
            console.print(f"attached {artifact.id}: {clean(artifact.metadata['summary']['modality'], 20)}")
        # a remote planner is checked now; the embedded one is still starting and is named with its first answer
        planner_name = await agent.planner.served_model() if resolve_backend(agent.config.planner) == "openai" \
            else None
        console.print(_planner_banner(agent, planner_name), soft_wrap=True)
        console.print(f"[dim]session {session.id} · {escape(COMMANDS)}[/]")
        screen = Screen(agent, console, errors)
        if demo and not interactive:
            console.print(f"[bold]you[/]: {DEMO_QUESTION}")
            await _turn(screen, session, DEMO_QUESTION)
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
            command, _, arguments = line.partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/attach":
                await _attach_command(session, arguments, modality)
            elif command == "/tools":
                await _tools_command(agent, session)
            elif command == "/history":
                for message in await session.history():
                    console.print(f"[dim]{clean(message['role'], 20)}[/]: {clean(message.get('content'))}")
            elif command.startswith("/"):
                errors.print(f"[red]error[/] unknown command {clean(command, 40)}; commands: {escape(COMMANDS)}",
                             soft_wrap=True)
            else:
                await _turn(screen, session, line)


async def _turn(screen: Screen, session: Any, question: str) -> None:
    pending = await screen.stream(session.events(question))
    while pending is not None:
        prompt = f"approve {plain(pending['tool'], 64)} {plain(pending['arguments'])}? [y/N] "
        decision = await asyncio.to_thread(input, prompt)
        pending = await screen.stream(session.resume(decision.strip().lower() in ("y", "yes")))


def chat(
    image: ImageOption = None,
    modality: ModalityOption = None,
    endpoint: EndpointOption = None,
    model: ModelOption = None,
    backend: BackendOption = "auto",
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
                                planner=lambda role: planner_config(endpoint, model, backend, role)))
            return
        asyncio.run(_chat(image or [], modality, endpoint, model, backend, session, demo))
    except MedagentError as exc:
        errors.print(f"[red]error[/] {exc.code}: {clean(exc.message)}", soft_wrap=True)
        raise typer.Exit(code=2) from None
