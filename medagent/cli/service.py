"""``medagent serve``, ``medagent keys create|list|revoke`` and ``medagent audit verify|tail``.

The service and these commands share one store (``MEDAGENT_SERVICE_DATABASE_URL``, default
``MEDAGENT_HOME/service.sqlite``): a key created here works at once in a running service, and a revoked one
stops working at once.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from medagent.agents.planner import BackendChoice
from medagent.cli.terminal import safe

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_CONNECTIONS = 256  # connections served at once; more are answered 503 at once instead of queueing memory

console = Console()
errors = Console(stderr=True)
keys_app = typer.Typer(help="API keys of the HTTP service (stored as scrypt hashes).", no_args_is_help=True)
audit_app = typer.Typer(help="The service's hash-chained audit log.", no_args_is_help=True)


def _store() -> tuple[Any, Any, Any]:
    from medagent.config import Settings
    from medagent.service.app import open_store
    from medagent.service.settings import ServiceSettings

    return open_store(ServiceSettings(), Settings())


def serve(
    host: Annotated[str, typer.Option(help="address to bind; off loopback, put TLS in front (keys are bearer "
                                           "tokens)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    backend: Annotated[BackendChoice | None, typer.Option(help="the planner backend (default: "
                                                               "MEDAGENT_SERVICE_PLANNER, else auto)")] = None,
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL of the planner")] = None,
    model: Annotated[str | None, typer.Option(help="the planner's model id as served")] = None,
    log_level: Annotated[str, typer.Option(help="level of the JSON-line logs on stderr")] = "info",
    dicomweb: Annotated[list[str] | None, typer.Option(
        "--dicomweb", help="a DICOMweb server (PACS) sessions may pull from and push to, as NAME=URL (e.g. "
        "pacs=http://host:8042/dicom-web); repeat for more. Requests name the server, never a URL")] = None,
) -> None:
    """Serve the agent over HTTP: sessions, uploads, questions (JSON or Server-Sent Events), approvals, artifacts;
    API keys, rate limits and an audit log."""
    import uvicorn

    from medagent.cli.chat import planner_config
    from medagent.logs import configure_logging
    from medagent.service.app import create_app
    from medagent.service.settings import ServiceSettings

    settings = ServiceSettings()
    if dicomweb:
        settings = _with_dicomweb(settings, dicomweb)
    if backend is not None or endpoint is not None or model is not None:
        settings = settings.model_copy(update={"planner": planner_config(endpoint, model, backend or "auto")})
    configure_logging(log_level.upper())
    configure_logging(log_level.upper(), logger="uvicorn.error")
    if host not in LOOPBACK:
        errors.print(f"[yellow]warning[/] serving on {safe(host)}: terminate TLS in front of it (API keys travel "
                     "as bearer tokens)")
    errors.print(f"serving medagent on http://{safe(host)}:{port}/v1 (OpenAPI: /v1/openapi.json, with a key)",
                 soft_wrap=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
                timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)))


def _with_dicomweb(settings: Any, servers: list[str]) -> Any:
    """``settings`` with the ``--dicomweb NAME=URL`` servers added (over MEDAGENT_SERVICE_DICOMWEB_SERVERS); a
    malformed one exits with status 2."""
    from pydantic import ValidationError

    named = dict(settings.dicomweb_servers)
    for item in servers:
        name, equals, url = item.partition("=")
        if not equals or not name.strip() or not url.strip():
            errors.print("[red]error[/] --dicomweb takes NAME=URL")
            raise typer.Exit(code=2)
        named[name.strip()] = url.strip()
    try:
        return type(settings).model_validate({**settings.model_dump(), "dicomweb_servers": named})
    except ValidationError as exc:
        problems = "; ".join(str(error.get("msg", "")) for error in exc.errors()[:4])
        errors.print(f"[red]error[/] --dicomweb: {safe(problems)}", soft_wrap=True)
        raise typer.Exit(code=2) from None


def keys_create(
    name: Annotated[str, typer.Argument(help="a label for the key (letters, digits, '.', '_', '-')")],
    rate: Annotated[float | None, typer.Option(help="requests a second (default: the service's)")] = None,
    burst: Annotated[int | None, typer.Option(help="requests at once (default: the service's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Create an API key. The key is printed once and stored only as a hash: keep it now."""
    database, keys, _audit = _store()
    try:
        created = keys.create(name, rate_per_s=rate, burst=burst)
    finally:
        database.close()
    if as_json:
        sys.stdout.write(json.dumps({**created.info.model_dump(), "key": created.token}) + "\n")
        return
    errors.print(f"key {created.info.key_id} ({safe(name)}) created; it is shown once, here:")
    sys.stdout.write(created.token + "\n")


def keys_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List API keys (ids, names, when created and revoked; never the keys)."""
    database, keys, _audit = _store()
    try:
        found = keys.all()
    finally:
        database.close()
    if as_json:
        sys.stdout.write(json.dumps([item.model_dump() for item in found]) + "\n")
        return
    table = Table("key id", "name", "created", "revoked", "rate/s", "burst")
    for item in found:
        table.add_row(item.key_id, safe(item.name), item.created_at, item.revoked_at or "",
                      "" if item.rate_per_s is None else str(item.rate_per_s), "" if item.burst is None else str(item.burst))
    console.print(table)


def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key id (medagent keys list)")]) -> None:
    """Revoke an API key: refused from now on, by every service sharing the store."""
    database, keys, _audit = _store()
    try:
        info = keys.revoke(key_id)
    finally:
        database.close()
    console.print(f"key {info.key_id} revoked at {info.revoked_at}")


def audit_verify(as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False) -> None:
    """Check the audit log's hash chain; exit status 1 at the first broken link (altered, missing, moved)."""
    database, _keys, audit = _store()
    try:
        result = audit.verify()
    finally:
        database.close()
    if as_json:
        sys.stdout.write(result.model_dump_json() + "\n")
    elif result.ok:
        console.print(f"[green]ok[/]: {result.records} records, head {result.head_seq} {result.head_hash}")
    else:
        console.print(f"[red]broken[/] at record {result.broken_seq} ({result.problem}): {result.message}; "
                      f"{result.records} records before it are intact", soft_wrap=True)
    if not result.ok:
        raise typer.Exit(code=1)


def audit_tail(count: Annotated[int, typer.Option("-n", min=1, max=10_000, help="how many records")] = 20) -> None:
    """The last records of the audit log, one JSON object a line."""
    database, _keys, audit = _store()
    try:
        records = audit.tail(count)
    finally:
        database.close()
    for record in records:
        sys.stdout.write(record.model_dump_json() + "\n")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    keys_app.command("create")(keys_create)
    keys_app.command("list")(keys_list)
    keys_app.command("revoke")(keys_revoke)
    audit_app.command("verify")(audit_verify)
    audit_app.command("tail")(audit_tail)
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
