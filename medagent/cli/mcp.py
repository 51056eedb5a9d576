"""``medagent mcp``: the expert tools over the Model Context Protocol, on stdio (for a client that starts it) or
streamable HTTP (``http://HOST:PORT/mcp``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from medagent.cli.terminal import safe

LOOPBACK = ("127.0.0.1", "::1", "localhost")

errors = Console(stderr=True)


class McpTransport(StrEnum):
    stdio = "stdio"
    http = "http"


def mcp(
    transport: Annotated[McpTransport, typer.Option(help="stdio: the client starts this command and talks over "
                                                         "its stdin and stdout; http: streamable HTTP at /mcp")]
    = McpTransport.stdio,
    host: Annotated[str, typer.Option(help="address to bind (http); off loopback, put TLS in front (keys are "
                                           "bearer tokens)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port (http)")] = 8766,
    tools: Annotated[list[str] | None, typer.Option("--tools", help="offer only these tools (repeat the option); "
                                                    "default: every tool ready here")] = None,
    max_upload_mb: Annotated[int, typer.Option(min=1, max=512, help="largest image upload_image takes, in MiB "
                                               "(also capped by the image size limit of the settings)")] = 32,
    max_calls: Annotated[int, typer.Option(min=1, max=64, help="tool calls running at once")] = 4,
    overlay_images: Annotated[bool, typer.Option(help="return the overlays a call drew as PNG image content "
                                                      "(bounded) beside their artifact ids")] = True,
    log_level: Annotated[str, typer.Option(help="level of the JSON log lines on stderr")] = "WARNING",
    auth: Annotated[bool, typer.Option(help="http: every request needs Authorization: Bearer <key>, a key of "
                                            "`medagent keys create`; --no-auth only on loopback")] = True,
) -> None:
    """Serve medagent's expert tools over MCP: typed schemas and model cards, an upload_image tool (base64) whose
    image ids the experts take (never paths), results as structured content."""
    import asyncio

    from medagent.assembly import Assembly
    from medagent.mcp_server import McpExperts, McpLimits
    from medagent.mcp_server.server import MIB
    from medagent.mcp_server.transport import quiet_logs, run_http, run_stdio

    quiet_logs(log_level.upper())
    root = Assembly()  # the toolbox every command uses: built-ins, installed plugins, family cards
    try:
        limits = McpLimits(max_upload_bytes=max_upload_mb * MIB, max_calls=max_calls,
                           overlay_images=2 if overlay_images else 0)
        experts = McpExperts(root.toolbox, transport=transport.value, tools=tools, limits=limits)
        names = ", ".join(tool.name for tool in experts.offered) or "(none)"
        if transport is McpTransport.stdio:
            errors.print(f"medagent mcp on stdio: upload_image, {safe(names)}", soft_wrap=True)
            run_stdio(experts)
            return
        if not auth and host not in LOOPBACK:
            errors.print(f"[red]error[/] --no-auth would let anyone who reaches {safe(host)} run these experts: "
                         "serve on loopback, or with keys")
            raise typer.Exit(2)
        gate = ServiceKeys() if auth else None
        errors.print(f"medagent mcp on http://{safe(host)}:{port}/mcp ({'API keys' if auth else 'no keys'}): "
                     f"upload_image, {safe(names)}", soft_wrap=True)
        try:
            run_http(experts, host, port, gate)
        finally:
            if gate is not None:
                gate.close()
    finally:
        asyncio.run(root.aclose())


class ServiceKeys:
    """The keys of ``medagent serve`` (its store under ``MEDAGENT_HOME``, or ``MEDAGENT_SERVICE_DATABASE_URL``)
    as the MCP server's gate, with the service's throttle on failed logins."""

    def __init__(self) -> None:
        from medagent.config import Settings
        from medagent.service.app import open_store
        from medagent.service.ratelimit import RateLimiter
        from medagent.service.settings import ServiceSettings

        settings = ServiceSettings()
        self.database, self.keys, _ = open_store(settings, Settings())
        self.failures = RateLimiter(settings.failed_auth_per_s, settings.failed_auth_burst)

    def verify(self, token: str) -> bool:
        return self.keys.verify(token) is not None

    def failed(self, client: str) -> float:
        return self.failures.acquire(client)

    def close(self) -> None:
        self.database.close()


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)
