"""A planner whose backend is still starting: calls wait for it, everything else goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from medagent.agents.planner import Message, Planner, PlannerConfig, PlannerTurn, TokenCallback, ToolChoice


class StartingPlanner:
    def __init__(self, config: PlannerConfig, connect: Callable[[], Awaitable[Planner]]) -> None:
        self.config = config
        self._task: asyncio.Task[Planner] = asyncio.ensure_future(connect())

    async def ready(self) -> Planner:
        return await asyncio.shield(self._task)

    async def served_model(self) -> str:
        return await (await self.ready()).served_model()

    async def complete(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        response_schema: dict[str, Any] | None = None,
        on_token: TokenCallback | None = None,
    ) -> PlannerTurn:
        planner = await self.ready()
        return await planner.complete(messages, tools=tools, tool_choice=tool_choice,
                                      response_schema=response_schema, on_token=on_token)

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a start that failed left nothing to close
                return
            return
        if not self._task.cancelled() and self._task.exception() is None:  # closed before: cancelled, nothing to close
            await self._task.result().aclose()
