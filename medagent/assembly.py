"""The composition root: the one place a running medagent is built from :class:`Settings` plus what you add.

    async with Assembly(settings, tools=[my_tool]) as root:    # nothing is loaded yet
        root.toolbox                  # artifact store, de-identifying loader, built-in + plugin + your tools
        await root.planner(PlannerConfig(backend="scripted"))   # any backend, or your factory
        root.tool_factory(ref)        # a study's `_target_` expert factory, built into tools

``Agent``, the CLI commands and the study runners obtain their parts here, so a tool you add or a plugin you
install reaches every way in, and closing the root closes the tools, the planners and the servers they started.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

from medagent.agents.factory import PlannerFactoryFunction
from medagent.agents.planner import Planner, PlannerConfig
from medagent.agents.pool import PlannerPool
from medagent.config import Settings
from medagent.errors import ConfigurationError, ExpertToolsMismatch
from medagent.families.registry import configured_tools
from medagent.tools.builtin import Toolbox
from medagent.tools.plugin import tools_from
from medagent.tools.spec import Tool


class Assembly:
    """Settings plus your tools in; the toolbox, planners and tool factories out. Builds each part on first use."""

    def __init__(self, settings: Settings | None = None, *, tools: Iterable[Tool[Any, Any]] = (),
                 plugins: bool | None = None, toolbox: Toolbox | None = None,
                 per_endpoint: int | None = None) -> None:
        """``tools``: your own tools, offered beside the built-in ones. ``plugins``: load the installed
        ``medagent.experts`` plugins (default ``settings.plugins``). ``toolbox``: one you built (then ``tools``
        and ``plugins`` belong to it). ``per_endpoint``: requests in flight per planner endpoint, shared by
        every planner this root builds."""
        self.settings = settings or Settings()
        self._tools = list(tools)
        self._plugins = plugins
        if toolbox is not None and (self._tools or plugins is not None):
            raise ConfigurationError("pass tools and plugins to the Toolbox you give, not beside it")
        self._toolbox = toolbox
        self.planners = PlannerPool(per_endpoint, log_dir=self.settings.home / "logs")

    @property
    def toolbox(self) -> Toolbox:
        if self._toolbox is None:
            self._toolbox = Toolbox(self.settings, tools=self._tools, plugins=self._plugins)
            # the family cards the settings configure are the user's own experts: offered with or without plugins
            self._toolbox.register_provided(*configured_tools(self.settings))
        return self._toolbox

    def add_tools(self, tools: Iterable[Tool[Any, Any]]) -> None:
        """Register more tools (a study's ``_target_`` factories) before the first call."""
        for item in tools:
            self.toolbox.registry.register(item)

    def tool_factory(self, factory: Any, kwargs: Mapping[str, Any] | None = None,
                     expected: Sequence[str] | None = None) -> list[Tool[Any, Any]]:
        """The tools ``factory(settings, **kwargs)`` provides; ``expected`` (a study's ``tools:`` list) must be
        exactly the names it returned, so a study never offers a tool it did not name."""
        made = tools_from(factory, self.settings, **dict(kwargs or {}))
        names = sorted(item.name for item in made)
        if expected is not None and names != sorted(expected):
            for item in made:
                item.close()
            raise ExpertToolsMismatch(f"the tool factory provides {', '.join(names) or 'no tools'}; the study "
                                      f"declares {', '.join(sorted(expected))}")
        return made

    async def planner(self, config: PlannerConfig, *, factory: PlannerFactoryFunction | None = None,
                      kwargs: Mapping[str, Any] | None = None, wait: bool = True) -> Planner:
        """The planner ``config`` describes (its ``backend``), or ``factory(config=config, **kwargs)``; bounded
        by its endpoint's shared limit and closed with the root."""
        return await self.planners.build(config, factory=factory, kwargs=kwargs, wait=wait)

    async def aclose(self) -> None:
        await self.planners.aclose()
        if self._toolbox is not None:
            self._toolbox.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
