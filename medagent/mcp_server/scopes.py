"""What each MCP session may reach, and how many calls run at once.

An MCP client names images by the ids ``upload_image`` returned to it. Artifact ids are content-addressed and the
store is shared by every session, so possession of an id is not enough: each session (a stdio process, an HTTP
``Mcp-Session-Id``) keeps the set of image ids it uploaded and of artifacts its own calls returned, and a call or a
resource read reaches only those. Sets are bounded in size and forgotten after the session has been idle."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from medagent.errors import ResourceExhausted


@dataclass
class _Reach:
    images: dict[str, None] = field(default_factory=dict)  # insertion-ordered: the order they were uploaded
    artifacts: dict[str, None] = field(default_factory=dict)
    used: float = field(default_factory=time.monotonic)


class SessionScopes:
    """Per-session sets of image and artifact ids, at most ``max_sessions`` of them (the least recently used
    goes first), each forgotten after ``idle_s`` without use."""

    def __init__(self, *, max_sessions: int, max_images: int, max_artifacts: int, idle_s: float) -> None:
        self.max_sessions = max_sessions
        self.max_images = max_images
        self.max_artifacts = max_artifacts
        self.idle_s = idle_s
        self._scopes: OrderedDict[str, _Reach] = OrderedDict()

    def _reach(self, scope: str) -> _Reach:
        now = time.monotonic()
        while self._scopes:  # the least recently used first: drop the idle ones
            oldest, least_recent = next(iter(self._scopes.items()))
            if now - least_recent.used <= self.idle_s:
                break
            del self._scopes[oldest]
        reach = self._scopes.get(scope)
        if reach is None:
            if len(self._scopes) >= self.max_sessions:
                self._scopes.popitem(last=False)
            reach = self._scopes[scope] = _Reach()
        self._scopes.move_to_end(scope)
        reach.used = now
        return reach

    def images(self, scope: str) -> list[str]:
        return list(self._reach(scope).images)

    def add_image(self, scope: str, image_id: str) -> None:
        reach = self._reach(scope)
        if image_id not in reach.images and len(reach.images) >= self.max_images:
            raise ResourceExhausted(f"this MCP session holds {self.max_images} images, the most one may; "
                                    "start a new session for more", limit=self.max_images)
        reach.images[image_id] = None

    def add_artifacts(self, scope: str, artifact_ids: Iterable[str]) -> None:
        reach = self._reach(scope)
        for artifact_id in artifact_ids:
            reach.artifacts.pop(artifact_id, None)
            reach.artifacts[artifact_id] = None
            while len(reach.artifacts) > self.max_artifacts:  # the oldest results go first
                reach.artifacts.pop(next(iter(reach.artifacts)))

    def reaches(self, scope: str, artifact_id: str) -> bool:
        reach = self._reach(scope)
        return artifact_id in reach.images or artifact_id in reach.artifacts


class CallGate:
    """At most ``running`` calls at once over all sessions, and at most ``waiting`` more queued behind them;
    a call beyond that is refused at once with :class:`ResourceExhausted` rather than queued without bound."""

    def __init__(self, *, running: int, waiting: int) -> None:
        self.running = running
        self.waiting = waiting
        self._admitted = 0
        self._semaphore: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._semaphore is None:  # made on the serving loop, at the first call
            self._semaphore = asyncio.Semaphore(self.running)
        if self._admitted >= self.running + self.waiting:
            raise ResourceExhausted(f"the server is busy ({self.running} calls running, {self.waiting} waiting); "
                                    "try again shortly", limit=self.running + self.waiting)
        self._admitted += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._admitted -= 1
