"""`medagent run`, `medagent report` and `medagent export`: batch studies from YAML, stored in SQL."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

from medagent.cli.terminal import safe
from medagent.errors import MedagentError
from medagent.files import private_dir, write_private
from medagent.names import confined

if TYPE_CHECKING:
    from medagent.config import Settings
    from medagent.store import StudyStore

console = Console()
errors = Console(stderr=True)

StoreOption = Annotated[str | None, typer.Option("--store", help="SQL URL (default: the SQLite file in MEDAGENT_HOME)")]


def _fail(exc: MedagentError) -> None:
    errors.print(f"[red]error[/] {escape(f'[{exc.code}]')} {safe(exc.message)}")
    raise typer.Exit(2)


def run(
    study: Annotated[Path, typer.Argument(help="study YAML", exists=True, dir_okay=False)],
    resume: Annotated[str | None, typer.Option("--resume", help="complete this run")] = None,
    retry_failed: Annotated[str | None, typer.Option("--retry-failed", help="rerun this run's failed cases")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="id of a new run (default: generated)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N cases")] = None,
    force: Annotated[bool, typer.Option("--force", help="resume even if the configuration changed")] = False,
    store_url: StoreOption = None,
    dataset: Annotated[Path | None, typer.Option(
        "--dataset", help="use this folder, manifest or case file instead of the study's dataset.path")] = None,
    allow_target: Annotated[list[str] | None, typer.Option(
        "--allow-target", help="also allow _target_ paths under this package (e.g. mypkg); repeatable")] = None,
    allow_any_target: Annotated[bool, typer.Option(
        "--allow-any-target", help="allow any _target_ import path: only for a study file you trust")] = False,
    ray_address: Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS", help="run the cases on this Ray cluster (auto, HOST:PORT or ray://HOST:PORT), "
                                         "as executor: ray does; needs a PostgreSQL store on several nodes")] = None,
) -> None:
    """Run a study: cases concurrently, each result written to SQL as it finishes; resumable.

    ``_target_`` paths (your tools, planners, roles) must be under medagent unless --allow-target names their
    package: a study file is data, and importing a module runs its code."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medagent.assembly import Assembly
    from medagent.config import Settings
    from medagent.runtime.untrained import NOTICE, weights_are_untrained
    from medagent.store import StudyStore
    from medagent.studies import BUILTIN_TOOL_NAMES, load_study, with_dataset
    from medagent.studies.components import DEFAULT_ALLOWED_PREFIXES
    from medagent.studies.config import ExecutorSpec
    from medagent.studies.runner import run_study
    from medagent.tools.builtin import Toolbox

    executor = None
    if ray_address is not None:  # validated as the study's own executor key is
        try:
            executor = ExecutorSpec.model_validate({"type": "ray", "address": ray_address})
        except ValueError:  # pydantic's ValidationError
            raise typer.BadParameter("must be auto, HOST:PORT or ray://HOST:PORT", param_hint="--ray") from None
    last: dict[str, int] = {}
    failed_codes: Counter[str] = Counter()
    untrained: set[str] = set()  # experts that ran on random test-only weights

    async def go() -> str:
        settings = Settings()
        # built once: the names of its plugin and family-card tools are what the study may name, then it runs it
        async with Assembly(settings) as root:
            return await validate_and_run(settings, root.toolbox)

    async def validate_and_run(settings: Settings, toolbox: Toolbox) -> str:
        prefixes = (*DEFAULT_ALLOWED_PREFIXES, *(prefix.rstrip(".") + "." for prefix in allow_target or []))
        config = load_study(study, known_tools=[*BUILTIN_TOOL_NAMES, *toolbox.plugin_tools],
                            allowed_prefixes=prefixes, allow_any_target=allow_any_target)
        if dataset is not None:
            config = with_dataset(config, dataset)
        if executor is not None:  # the study's worker count, if it sets one, still holds
            config = config.model_copy(update={"executor": executor.model_copy(
                update={"workers": config.executor.workers})})
        store = StudyStore.open(store_url or config.store.url, settings.home)
        chosen = resume or retry_failed or run_id
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn()]
        # transient: a run that stops on an error leaves the error, not an empty bar, on the terminal
        with Progress(*columns, console=errors, transient=True) as progress:
            task = progress.add_task(escape(config.name), total=None, failed=0, rate="")
            started = asyncio.get_running_loop().time()
            try:
                async for event in run_study(config, store=store, settings=settings, run_id=chosen,
                                             resume=resume is not None, retry_failed=retry_failed is not None,
                                             force=force, limit=limit, toolbox=toolbox):
                    chosen = event.run_id
                    elapsed = max(asyncio.get_running_loop().time() - started, 1e-6)
                    rate = f"{(event.done - event.skipped) / elapsed:.2f} cases/s"
                    progress.update(task, total=event.total, completed=event.done, failed=event.failed, rate=rate)
                    last.update(total=event.total, done=event.done, failed=event.failed, skipped=event.skipped)
                assert chosen is not None
                failed_codes.update(case.error.code if case.error else "unknown"
                                    for case in await asyncio.to_thread(store.cases, chosen, "failed"))
                untrained.update(name for case in await asyncio.to_thread(store.cases, chosen)
                                 for name in weights_are_untrained(case.expert_weights))
            finally:
                store.close()
        assert chosen is not None
        return chosen

    try:
        finished = asyncio.run(go())
    except MedagentError as exc:
        _fail(exc)
        return
    console.print(f"run [bold]{escape(finished)}[/] finished: {last.get('done', 0)}/{last.get('total', 0)} cases, "
                  f"{last.get('failed', 0)} failed, {last.get('skipped', 0)} already done; "
                  f"report: medagent report {escape(finished)}", soft_wrap=True)
    if failed_codes:
        console.print(f"failed cases in run {escape(finished)} by error code: {_codes(failed_codes)}; "
                      f"rerun them: medagent run STUDY --retry-failed {escape(finished)}", soft_wrap=True)
    if untrained:
        console.print(f"[bold red]{escape(NOTICE)}[/] (experts: {escape(', '.join(sorted(untrained)))})",
                      soft_wrap=True)


def _codes(counts: Counter[str]) -> str:
    return ", ".join(f"{escape(code)} {count}" for code, count in counts.most_common())


def report(
    run_id: Annotated[str, typer.Argument(help="the run to report")],
    output_format: Annotated[Literal["md", "html"], typer.Option("--format")] = "md",
    compare: Annotated[list[str] | None, typer.Option("--compare", help="runs to compare side by side")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="folder for the report and its plots")] = None,
    store_url: StoreOption = None,
) -> None:
    """Metrics with bootstrap confidence intervals, subgroups, tool and token usage, plots."""
    from medagent.config import Settings
    from medagent.reports import (
        ReportOptions,
        build_report,
        compare_runs,
        render_html,
        render_markdown,
        write_plots,
    )
    from medagent.reports.vqa_report import skipped_rows_of
    from medagent.store import StudyStore, UnknownRun

    settings = Settings()
    try:
        # the default folder is named by the run id: it must stay under MEDAGENT_HOME/reports
        folder = out or confined(settings.home / "reports", run_id, "the report folder")
        with StudyStore.open(store_url, settings.home) as store:
            reports, frames = [], []
            for one in [run_id, *(compare or [])]:
                stored = store.get_run(one)
                if stored is None:
                    raise UnknownRun(f"no run with id {one!r} in the study store", run_id=one)
                cases, calls = store.cases_frame(one), store.tool_calls_frame(one)
                reports.append(build_report(cases, calls, run_id=one, options=ReportOptions.from_study(stored.config),
                                            skipped_rows=skipped_rows_of(store.metrics(one))))
                frames.append((cases, calls))
            private_dir(folder)
            gallery = _gallery(store, run_id, settings, folder)
    except MedagentError as exc:
        _fail(exc)
        return
    write_plots(reports[0], frames[0][0], frames[0][1], folder)
    comparison = compare_runs(reports) if compare else None
    text = render_html(reports[0], comparison) if output_format == "html" else render_markdown(reports[0], comparison)
    target = folder / f"report.{output_format}"
    write_private(target, text)
    console.print(f"report written to {escape(str(target))}", soft_wrap=True)
    if gallery is not None:
        console.print(f"case gallery written to {escape(str(gallery))}", soft_wrap=True)


def _gallery(store: StudyStore, run_id: str, settings: Settings, folder: Path) -> Path | None:
    """The per-case gallery of a VQA or dialogue run, beside its report; None for other runs."""
    from medagent.reports.gallery import write_gallery
    from medagent.reports.stored import graph_type
    from medagent.tools.artifacts import ArtifactStore

    if graph_type(store, run_id) not in ("vqa", "dialogue"):
        return None
    return write_gallery(store, run_id, ArtifactStore(settings.artifacts_dir), folder)


def export(
    run_id: Annotated[str, typer.Argument(help="the run to export")],
    output_format: Annotated[Literal["csv", "parquet", "trajectories"], typer.Option("--format")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", help="output file")] = None,
    store_url: StoreOption = None,
) -> None:
    """One row per (case, repeat) with truth, predictions, subgroups, tokens and latency; or (trajectories) one
    JSON line per (case, repeat) with its messages, tool calls, answer and correctness, for training pipelines."""
    from medagent.config import Settings
    from medagent.reports import export as write_frame
    from medagent.reports.export import export_trajectories
    from medagent.store import StudyStore, UnknownRun

    settings = Settings()
    suffix = "jsonl" if output_format == "trajectories" else output_format
    try:
        with StudyStore.open(store_url, settings.home) as store:
            if store.get_run(run_id) is None:
                raise UnknownRun(f"no run with id {run_id!r} in the study store", run_id=run_id)
            # the default file is named by the run id: it must stay in the working directory
            path = out or Path(f"{run_id}.{suffix}")
            if out is None:
                confined(Path.cwd(), path, "the export file")
            if output_format == "trajectories":
                rows, target = export_trajectories(store, run_id, path), path
            else:
                frame = store.cases_frame(run_id)
                rows, target = len(frame), write_frame(frame, path, output_format)
    except MedagentError as exc:
        _fail(exc)
        return
    console.print(json.dumps({"run_id": run_id, "rows": rows, "path": str(target)}))


def runs(
    store_url: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The runs in the study store: id, study, status, succeeded and failed cases, when each started."""
    from rich.table import Table

    from medagent.config import Settings
    from medagent.store import StudyStore

    try:
        with StudyStore.open(store_url, Settings().home) as store:
            rows = [{"run_id": run.run_id, "study": run.study, "status": run.status,
                     "succeeded": len(store.completed_keys(run.run_id)), "failed": len(store.failed_keys(run.run_id)),
                     "started": run.created_at.isoformat(timespec="seconds") if run.created_at else None}
                    for run in store.runs()]
    except MedagentError as exc:
        _fail(exc)
        return
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        console.print("no runs yet: medagent run STUDY.yaml")
        return
    table = Table(title="study runs")
    for column in ("run", "study", "status", "succeeded", "failed", "started"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(safe(row[key] if row[key] is not None else "") for key in
                        ("run_id", "study", "status", "succeeded", "failed", "started")))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("runs")(runs)
    app.command("report")(report)
    app.command("export")(export)
