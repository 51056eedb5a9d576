"""Planners for several roles (doctor, patient, measurement, assessor), built by :mod:`medagent.agents.factory`.

Roles on the embedded backend share one llama.cpp server per GGUF file, started on first use. With
``per_endpoint`` set, requests to one endpoint (every role and arm that uses it) are bounded together,
so a study cannot overrun a shared vLLM server however many cases are in flight; a role on several replicas
(``endpoints``) has the limit per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medagent.agents.factory import PlannerFactory, PlannerFactoryFunction, endpoint_key
from medagent.agents.planner import Message, Planner, PlannerConfig, PlannerTurn, TokenCallback, ToolChoice
from medagent.agents.replicas import ReplicatedPlanner

# set by a scheduler (the study runner's start-up gate) for the task running one case: called when the
# case is about to wait for a planner server, i.e. when its CPU-bound start-up is over
_ON_FIRST_WAIT: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "medagent_on_first_wait", default=None)


def entering_wait() -> None:
    """Tell the scheduler of the current case (if any) that it now waits on I/O."""
    callback = _ON_FIRST_WAIT.get()
    if callback is not None:
        callback()


@contextlib.contextmanager
def calling_on_wait(callback: Callable[[], None]) -> Iterator[None]:
    """Within this block (and tasks started in it), ``entering_wait()`` calls ``callback``."""
    token = _ON_FIRST_WAIT.set(callback)
    try:
        yield
    finally:
        _ON_FIRST_WAIT.reset(token)


class LimitedPlanner:
    """A planner whose requests wait for a slot of a semaphore shared by every planner on its endpoint, or of
    whatever limit ``slot()`` holds (one context per request: a cluster-wide limit, say)."""

    def __init__(self, planner: Planner, slots: asyncio.Semaphore | None, *,
                 slot: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None) -> None:
        """``slots=None`` and no ``slot``: the planner bounds its own requests (replicas, each with its limit)."""
        self.inner = planner
        self.config = planner.config
        self._slot = slot or (lambda: slots or contextlib.nullcontext())

    async def served_model(self) -> str:
        return await self.inner.served_model()

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       tool_choice: ToolChoice = "auto", response_schema: dict[str, Any] | None = None,
                       on_token: TokenCallback | None = None) -> PlannerTurn:
        entering_wait()
        async with self._slot():
            return await self.inner.complete(messages, tools=tools, tool_choice=tool_choice,
                                             response_schema=response_schema, on_token=on_token)

    async def aclose(self) -> None:
        await self.inner.aclose()


class PlannerPool(PlannerFactory):
    """A :class:`PlannerFactory` whose planners share one request limit per endpoint (``per_endpoint``)."""

    def __init__(self, per_endpoint: int | None = None, *, log_dir: Path | None = None) -> None:
        """``log_dir``: where embedded servers log (default: MEDAGENT_HOME/logs of the environment)."""
        super().__init__(log_dir=log_dir)
        self.per_endpoint = per_endpoint
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.replicas.limit = per_endpoint  # per replica: each server of a role on endpoints is one endpoint

    def limited(self, planner: Planner) -> Planner:
        """``planner`` bounded by its endpoint's shared limit (unchanged when the pool has no limit)."""
        if self.per_endpoint is None:
            return planner
        if isinstance(planner, ReplicatedPlanner):  # its board holds the limit, per replica
            return LimitedPlanner(planner, None)
        key = endpoint_key(planner.config)
        slots = self._slots.setdefault(key, asyncio.Semaphore(self.per_endpoint))
        return LimitedPlanner(planner, slots)

    async def build(self, config: PlannerConfig, *, factory: PlannerFactoryFunction | None = None,
                    kwargs: Mapping[str, Any] | None = None, wait: bool = True) -> Planner:
        return self.limited(await super().build(config, factory=factory, kwargs=kwargs, wait=wait))

    async def planner(self, config: PlannerConfig) -> Planner:
        """The planner ``config`` describes (its ``backend``), bounded by its endpoint's limit."""
        return await self.build(config)
