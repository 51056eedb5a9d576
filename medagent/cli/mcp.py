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
    host: Annotated[str, typer.Option(help="address to bind (http); the server has no authentication: keep it on "
                                           "loopback or behind an authenticating proxy")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port (http)")] = 8766,
    tools: Annotated[list[str] | None, typer.Option("--tools", help="offer only these tools (repeat the option); "
                                                    "default: every tool ready here")] = None,
    max_upload_mb: Annotated[int, typer.Option(min=1, max=512, help="largest image upload_image takes, in MiB "
                                               "(also capped by the image size limit of the settings)")] = 32,
    max_calls: Annotated[int, typer.Option(min=1, max=64, help="tool calls running at once")] = 4,
    overlay_images: Annotated[bool, typer.Option(help="return the overlays a call drew as PNG image content "
                                                      "(bounded) beside their artifact ids")] = True,
    log_level: Annotated[str, typer.Option(help="level of the JSON log lines on stderr")] = "WARNING",
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
        if host not in LOOPBACK:
            errors.print(f"[yellow]warning[/] serving on {safe(host)}: anyone who reaches it can run these experts")
        errors.print(f"medagent mcp on http://{safe(host)}:{port}/mcp: upload_image, {safe(names)}", soft_wrap=True)
        run_http(experts, host, port)
    finally:
        asyncio.run(root.aclose())


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)
