"""Concurrency limits that hold across a Ray cluster: per planner endpoint and per expert, not per worker.

One :class:`SlotBoard` (a Ray actor owned by the study's driver, on the head node) keeps the slots of every
limited key; each case worker takes a slot before a planner request to an HTTP endpoint, or before a call of a
tool the study limits (``concurrency.per_expert``), and gives it back after. A worker that dies holding slots
does not leak them: the driver tells the board to forget that worker. Keys are hashed before they leave a
worker, so no endpoint URL (which may carry credentials) reaches the board or Ray's dashboard.

Each worker keeps its local limits too (the planner pool's, the registry's): they never bind harder than the
cluster's, and a tool's own ``max_concurrency`` (a GPU's memory) stays a per-process policy.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from medagent.agents.factory import endpoint_key, resolve_backend
from medagent.agents.planner import Planner
from medagent.agents.pool import LimitedPlanner, PlannerPool
from medagent.agents.replicas import ReplicatedPlanner

if TYPE_CHECKING:
    from medagent.studies.runner import StudyRunner

_MAX_EARLY_RELEASES = 10_000  # releases whose acquire never arrived (cancelled on the way): remembered, bounded


class _Key:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, str] = {}  # token -> holder
        self.waiting: OrderedDict[str, tuple[str, asyncio.Future[None]]] = OrderedDict()
        self.peak = 0


class SlotBoard:
    """Counting semaphores by key, with owners: the body of the cluster's limiter actor (plain Python, so it is
    tested without a cluster). Waiters are served first come, first served."""

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}
        self._early: OrderedDict[str, None] = OrderedDict()

    async def acquire(self, key: str, limit: int, token: str, holder: str) -> None:
        """Wait for a slot of ``key`` (at most ``limit`` held at once) for ``holder``; ``token`` names this hold."""
        if self._early.pop(token, "absent") is None:  # released (cancelled) before it got here: nothing to hold
            return
        state = self._keys.setdefault(key, _Key(limit))
        if len(state.held) < state.limit and not state.waiting:
            self._grant(state, token, holder)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiting[token] = (holder, future)
        await future

    def release(self, key: str, token: str) -> None:
        """Give a slot back, or withdraw a wait (a caller cancelled while waiting); either may come first."""
        state = self._keys.get(key)
        if state is not None and state.held.pop(token, None) is not None:
            self._serve(state)
        elif state is not None and token in state.waiting:
            _, future = state.waiting.pop(token)
            future.cancel()
        else:
            self._early[token] = None
            while len(self._early) > _MAX_EARLY_RELEASES:
                self._early.popitem(last=False)

    def forget(self, holder: str) -> int:
        """Free every slot ``holder`` (a worker that died) held or waited for; how many were held."""
        freed = 0
        for state in self._keys.values():
            for token in [token for token, owner in state.held.items() if owner == holder]:
                del state.held[token]
                freed += 1
            for token in [token for token, (owner, _) in state.waiting.items() if owner == holder]:
                state.waiting.pop(token)[1].cancel()
            self._serve(state)
        return freed

    def peaks(self) -> dict[str, int]:
        """Key -> the most slots held at once so far."""
        return {key: state.peak for key, state in self._keys.items()}

    def _grant(self, state: _Key, token: str, holder: str) -> None:
        state.held[token] = holder
        state.peak = max(state.peak, len(state.held))

    def _serve(self, state: _Key) -> None:
        while state.waiting and len(state.held) < state.limit:
            token, (holder, future) = state.waiting.popitem(last=False)
            if not future.done():
                self._grant(state, token, holder)
                future.set_result(None)


def board_key(kind: str, name: str) -> str:
    """The board's name for a limited thing: a hash, so that an endpoint URL never leaves the worker."""
    return f"{kind}:{hashlib.sha256(name.encode()).hexdigest()[:24]}"


class ClusterSlot:
    """``async with ClusterSlot(board, key, limit, holder)``: hold one of the cluster's ``limit`` slots of ``key``
    (one object per hold)."""

    def __init__(self, board: Any, key: str, limit: int, holder: str) -> None:
        self._board, self._key, self._limit, self._holder = board, key, limit, holder
        self._token = ""

    async def __aenter__(self) -> None:
        self._token = uuid.uuid4().hex
        try:
            await self._board.acquire.remote(self._key, self._limit, self._token, self._holder)
        except BaseException:  # cancelled while waiting: the board must not hand this slot out later
            self._board.release.remote(self._key, self._token)
            raise

    async def __aexit__(self, *_: object) -> None:
        self._board.release.remote(self._key, self._token)  # not awaited: the case goes on at once


class ClusterPlannerPool(PlannerPool):
    """The worker's planner pool: a planner on one HTTP endpoint is limited across the cluster. Embedded and
    scripted planners are each worker's own (a server per process): they keep the local limit; so does a role on
    several replicas, whose limit holds per replica and per worker."""

    def __init__(self, per_endpoint: int, board: Any, holder: str, **kwargs: Any) -> None:
        super().__init__(per_endpoint, **kwargs)
        self._board, self._holder = board, holder

    def limited(self, planner: Planner) -> Planner:
        if isinstance(planner, ReplicatedPlanner) or resolve_backend(planner.config) != "openai":
            return super().limited(planner)
        key = board_key("endpoint", endpoint_key(planner.config))
        return LimitedPlanner(planner, None, slot=functools.partial(ClusterSlot, self._board, key,
                                                                    self.per_endpoint or 1, self._holder))


def install_cluster_limits(runner: StudyRunner, board: Any, holder: str) -> None:
    """Give a worker's runner the cluster's limits: its planner pool, and a gate on each tool the study limits."""
    concurrency = runner.config.concurrency
    pool = ClusterPlannerPool(concurrency.per_planner_endpoint, board, holder,
                              log_dir=runner.settings.home / "logs")
    runner.root.planners = runner.planners = pool  # nothing was built on the pool it replaces
    registry = runner.toolbox.registry
    for tool, limit in concurrency.expert_limits(registry.names()).items():
        registry.set_gate(tool, functools.partial(ClusterSlot, board, board_key("tool", tool), limit, holder))
