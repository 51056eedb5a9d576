"""``medagent expert serve``: experts as an HTTP service in this process (and this virtual environment)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from medagent.cli.terminal import safe

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_CONNECTIONS = 64  # connections served at once; more are answered 503 at once instead of queueing memory

errors = Console(stderr=True)


def serve(
    experts: Annotated[list[str], typer.Argument(help="family card files (.yaml/.json), installed plugin names or "
                                                      "built-in tool names", metavar="PLUGIN_OR_FAMILY_CONFIG...")],
    host: Annotated[str, typer.Option(help="address to bind; the service has no authentication: keep it on "
                                           "loopback or behind an authenticating proxy")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level")] = "warning",
    artifact_ttl: Annotated[float, typer.Option("--artifact-ttl-s", min=1.0, help="seconds a mask or overlay a call "
                                                 "wrote is kept for its client to fetch")] = 900.0,
) -> None:
    """Serve experts over HTTP (card, readiness, health, batched typed predictions) for `family: remote` cards."""
    import uvicorn

    from medagent.config import Settings
    from medagent.remote.app import create_app
    from medagent.remote.service import ExpertService

    service = ExpertService.from_sources(list(experts), Settings(), artifact_ttl_s=artifact_ttl)
    if host not in LOOPBACK:
        errors.print(f"[yellow]warning[/] serving on {safe(host)}: anyone who reaches it can run these experts")
    names = ", ".join(service.registry.names())
    errors.print(f"serving {safe(names)} on http://{safe(host)}:{port}", soft_wrap=True)
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, limit_concurrency=MAX_CONNECTIONS,
                    timeout_keep_alive=5, timeout_graceful_shutdown=5, access_log=False)
    finally:
        service.close()
