"""The ``medagent`` command line: a thin face over the library."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from medagent import __version__
from medagent.cli.expert_deploy import deploy as deploy_experts
from medagent.cli.expert_serve import serve as serve_experts
from medagent.cli.experts import experts_list
from medagent.cli.index import index_app
from medagent.cli.study import register as register_study_commands
from medagent.cli.terminal import safe
from medagent.errors import ConfigurationError, MedagentError


def _settings_error(exc: ValidationError) -> ConfigurationError:
    """A bad ``MEDAGENT_*`` variable, named with what is wrong; its value is not shown (it may be a secret)."""
    problem = exc.errors(include_url=False, include_input=False)[0]
    where = problem["loc"][0] if problem["loc"] else "settings"
    return ConfigurationError(f"environment variable MEDAGENT_{str(where).upper()}: {problem['msg']}")


class _TypedErrorsApp(typer.Typer):
    """A typed error that escapes a command (a bad secret, an unreadable configuration, a bad ``MEDAGENT_*``
    variable) ends it with its code and message on stderr and exit status 2, never a traceback (which could
    show values and paths)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (MedagentError, ValidationError) as exc:
            if isinstance(exc, ValidationError):
                if exc.title != "Settings":
                    raise
                exc = _settings_error(exc)
            Console(stderr=True).print(f"[red]error[/] {escape(f'[{exc.code}]')} {safe(exc.message)}",
                                       soft_wrap=True)
            sys.exit(2)



app = _TypedErrorsApp(help="medagent: a planner model reasoning over medical images with expert models.",
                      no_args_is_help=True, pretty_exceptions_enable=False)
experts_app = typer.Typer(help="Inspect the expert models.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")
app.add_typer(index_app, name="index")

console = Console()
errors = Console(stderr=True)

EXAMPLES = {"ct": "pydicom CT example", "mr": "pydicom MR example", "nifti": "nibabel anatomical.nii"}


def _example_path(name: str) -> Path:
    if name in ("ct", "mr"):
        import pydicom.examples

        return Path(pydicom.examples.get_path(name))
    if name == "nifti":
        import importlib.resources

        return Path(str(importlib.resources.files("nibabel") / "tests" / "data" / "anatomical.nii"))
    raise typer.BadParameter(f"unknown example {name!r}; choose from {', '.join(EXAMPLES)}")


def _version(value: bool) -> None:
    if value:
        console.print(f"medagent {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """medagent command line."""
    # SIGTERM (a service manager, a benchmark, a terminal closing): stop the embedded planner server (an
    # exit handler) and leave at once; a thread blocked reading the terminal would stall a slower unwind,
    # and every write medagent makes is already crash-safe (SQLite WAL, PostgreSQL transactions)
    signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum: int, _frame: object) -> None:
    import atexit
    import os

    atexit._run_exitfuncs()
    os._exit(128 + signum)


experts_app.command("list")(experts_list)
expert_app = typer.Typer(help="Run experts as a service for other medagents: in this process or on a Ray cluster.",
                         no_args_is_help=True)
app.add_typer(expert_app, name="expert")
expert_app.command("serve")(serve_experts)
expert_app.command("deploy")(deploy_experts)


async def _inspect_one(toolbox: Any, path: Path, modality: str | None, out: Path | None) -> dict[str, Any]:
    artifact = toolbox.attach(path, modality=modality)
    context = toolbox.context([artifact.id])
    report: dict[str, Any] = {"image_id": artifact.id, "image": artifact.metadata["summary"], "results": {}}
    record = artifact.metadata["record"]
    if record.get("deid"):
        report["deidentification"] = {"profile": record["deid"]["profile"],
                                      "attributes_changed": len(record["deid"]["actions"]),
                                      "private_tags_removed": record["deid"]["private_tags_removed"]}
    names = ["assess_image_quality", "read_dicom_header", "locate_lungs", "classify_chest_xray"]
    outcomes = await asyncio.gather(*(toolbox.call(n, {"image_id": artifact.id}, context) for n in names),
                                    return_exceptions=True)
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, MedagentError):
            report["results"][name] = {"error": outcome.to_dict()}
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            report["results"][name] = outcome.model_dump(mode="json")
    overlay_id = report["results"]["locate_lungs"].get("overlay_id")
    if overlay_id and out is not None:
        from medagent.files import write_private

        target = write_private(out / f"{artifact.id}-lungs.png", toolbox.store.get(overlay_id).path.read_bytes())
        report["results"]["locate_lungs"]["overlay_file"] = str(target)
    return report


def _print_report(source: str, report: dict[str, Any]) -> None:
    image = report["image"]
    console.rule(f"[bold]{safe(source)}[/] -> {safe(report['image_id'])}")
    shape = "x".join(map(str, image["shape"]))
    console.print(safe(f"{image['modality']} {image['format']} {shape}  spacing {image['spacing_mm'] or 'unknown'} mm"
                       f"  orientation {image['orientation'] or 'unknown'}"))
    if "deidentification" in report:
        deid = report["deidentification"]
        console.print(f"de-identified: {deid['attributes_changed']} attributes changed, "
                      f"{deid['private_tags_removed']} private tags removed")
    for name, result in report["results"].items():
        if "error" in result:
            error = result["error"]
            colour = "yellow" if error["family"] == "tool_failure" else "red"
            console.print(f"[{colour}]{name}: {safe(error['code'])}[/] - {safe(error['message'])}")
        elif name == "assess_image_quality":
            flags = ", ".join(f["message"] for f in result["flags"]) or "no problems found"
            console.print(f"[green]{name}[/]: {'usable' if result['usable'] else 'NOT usable'} - {safe(flags)}")
        elif name == "read_dicom_header":
            meta = {k: v for k, v in result["metadata"].items() if v not in (None, "") and not k.endswith("uid")}
            console.print(f"[green]{name}[/]: {safe(meta)}")  # DICOM values: data, not markup
        elif name == "locate_lungs":
            boxes = "; ".join(f"{l['side']} lung {l['box']['x0']},{l['box']['y0']}-{l['box']['x1']},{l['box']['y1']}"
                              f" ({l['method']})" for l in result["lungs"])
            console.print(f"[green]{name}[/]: {safe(boxes)}" + (f"  overlay: {safe(result['overlay_file'])}"
                                                         if result.get("overlay_file") else ""))
        elif name == "classify_chest_xray":
            top = ", ".join(f"{f['label']} {f['probability']:.2f}" for f in result["findings"][:5])
            marker = " [red](UNTRAINED test weights)[/]" if result["provenance"]["untrained"] else ""
            console.print(f"[green]{name}[/]{marker}: {safe(top)}")


@app.command()
def inspect(
    images: Annotated[list[Path] | None, typer.Argument(help="PNG, JPEG, DICOM or NIfTI files.")] = None,
    example: Annotated[list[str] | None, typer.Option("--example", help=f"Bundled example: {', '.join(EXAMPLES)}.")] = None,
    modality: Annotated[str | None, typer.Option(help="Declare the modality of PNG/JPEG/NIfTI inputs (e.g. DX, CT).")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write overlay PNGs into.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Load, de-identify and assess images: quality, header, lung boxes, classifier where weights exist."""
    from medagent.assembly import Assembly
    from medagent.files import writable_dir

    sources = [(str(path), path) for path in images or []]
    sources += [(f"example:{name}", _example_path(name)) for name in example or []]
    if not sources:
        raise typer.BadParameter("give at least one image or --example")
    if out is not None:
        writable_dir(out)  # before any image is read: output that cannot be written fails at once, typed
    toolbox = Assembly().toolbox
    reports: dict[str, Any] = {}
    failed = 0
    try:
        for label, path in sources:
            try:
                reports[label] = asyncio.run(_inspect_one(toolbox, path, modality, out))
            except MedagentError as exc:
                failed += 1
                reports[label] = {"error": exc.to_dict()}
                errors.print(f"[red]error[/] {safe(label)}: {exc.code}: {safe(exc.message)}", soft_wrap=True)
                continue
            if not as_json:
                _print_report(label, reports[label])
    finally:
        toolbox.close()
    if as_json:
        sys.stdout.write(json.dumps(reports, indent=2) + "\n")
    if failed:
        raise typer.Exit(code=2)


planner_app = typer.Typer(help="Serve or inspect planner models.", no_args_is_help=True)
app.add_typer(planner_app, name="planner")


@planner_app.command("serve")
def planner_serve(
    model: Annotated[str, typer.Argument(help="Model id or local folder, e.g. Qwen/Qwen2.5-VL-7B-Instruct.")],
    served_name: Annotated[str | None, typer.Option(help="--served-model-name for vLLM.")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
    run: Annotated[bool, typer.Option(help="Start the server instead of printing the command.")] = False,
) -> None:
    """Print (or run) the vLLM command with the tool-call parser and chat template the model needs."""
    import os
    import shlex

    from medagent.agents.vllm_recipes import recipe_for, serve_command

    command = serve_command(model, served_name=served_name, port=port, python=sys.executable if run else "python")
    recipe = recipe_for(model)
    if not run:
        console.print(escape(shlex.join(command)), soft_wrap=True)
        if recipe is not None:
            console.print(f"[dim]{recipe.family}: use PlannerConfig(tool_calling={recipe.tool_calling!r}, "
                          f"supports_images={recipe.supports_images}). {escape(recipe.notes)}[/]", soft_wrap=True)
        else:
            console.print("[dim]no recipe for this model: add the tool-call parser its card names[/]")
        return
    os.execvp(command[0], command)  # the user asked to run the server


def _register_conversation_commands() -> None:
    from medagent.cli.chat import ask, chat

    app.command()(ask)
    app.command()(chat)


_register_conversation_commands()
register_study_commands(app)
# more command groups: one `register(app)` line each (the service, keys and audit; mcp)
from medagent.cli.mcp import register as register_mcp; register_mcp(app)  # noqa: I001
from medagent.cli.service import register as register_service; register_service(app)  # noqa: I001
