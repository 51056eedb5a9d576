"""What ``medagent expert serve`` can host: family card files, installed plugins (entry-point names) and built-in
tool names, resolved to tools without loading any model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.families.card import load_card
from medagent.families.registry import CARD_SUFFIXES, build_card
from medagent.tools.plugin import discover_plugins
from medagent.tools.spec import Tool

MAX_SOURCES = 32


def resolve(sources: list[str], settings: Settings) -> tuple[list[Tool[Any, Any]], list[Callable[[], None]]]:
    """The tools of every source, in order, and what closes what they share (the built-in expert suite)."""
    if not sources or len(sources) > MAX_SOURCES:
        raise ConfigurationError(f"name 1 to {MAX_SOURCES} experts to serve (card files, plugins or built-in tools)")
    tools: list[Tool[Any, Any]] = []
    closers: list[Callable[[], None]] = []
    plugins: tuple[list[tuple[str, Tool[Any, Any]]], list[Any]] | None = None
    builtins: dict[str, Tool[Any, Any]] | None = None
    for source in sources:
        if Path(source).suffix in CARD_SUFFIXES:
            path = Path(source).expanduser()
            if not path.is_file():
                raise ConfigurationError(f"no family card file {path.name!r} (give its path)")
            tools += build_card(load_card(path), settings)
            continue
        if plugins is None:
            plugins = discover_plugins(settings)
        provided = [tool for plugin, tool in plugins[0] if plugin == source]
        broken = [item for item in plugins[1] if item.name == source]
        if broken:
            raise ConfigurationError(f"plugin {source!r} cannot be served: {broken[0].reason}")
        if provided:
            tools += provided
            continue
        if builtins is None:
            builtins, close = _builtins(settings)
            closers.append(close)
        if source not in builtins:
            known = sorted({plugin for plugin, _ in plugins[0]} | set(builtins))
            raise ConfigurationError(f"{source[:64]!r} is not a family card file ({'/'.join(CARD_SUFFIXES)}), an "
                                     f"installed plugin or a built-in tool here; known: {', '.join(known)}")
        tools.append(builtins[source])
    return tools, closers


def _builtins(settings: Settings) -> tuple[dict[str, Tool[Any, Any]], Callable[[], None]]:
    """The built-in tools whose packages are installed here (construction loads no model)."""
    from medagent.tools.builtin import builtin_tools, missing_builtins
    from medagent.tools.suite import ExpertSuite

    suite = ExpertSuite.from_settings(settings)
    missing = {item.name for item in missing_builtins()}
    return {tool.name: tool for tool in builtin_tools(suite) if tool.name not in missing}, suite.close
