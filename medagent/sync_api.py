"""The library surface without asyncio, for scripts and notebooks: the same Agent and Session, blocking.

    with SyncAgent(AgentConfig()) as agent:
        session = agent.session()
        session.attach("chest.dcm")
        print(session.ask("Is there cardiomegaly?").text)

The agent runs on an event loop in a thread of its own; every call waits for its result there (so a SyncAgent may be
used from several threads; calls of one session still run one at a time, as in the async API).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, BinaryIO, Self, TypeVar

from medagent.agents.planner import Message
from medagent.api import Agent, AgentConfig, Answer, Session
from medagent.tools.artifacts import Artifact

T = TypeVar("T")


class SyncAgent:
    def __init__(self, config: AgentConfig | None = None, **options: Any) -> None:
        """``options``: those of :class:`medagent.api.Agent` (settings, planner, toolbox, tools)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="medagent-sync", daemon=True)
        self._thread.start()
        self.agent = Agent(config, **options)
        try:
            self.run(self.agent.start())
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine on the agent's loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def session(self, session_id: str | None = None, *, owner: str | None = None) -> SyncSession:
        return SyncSession(self, self.agent.session(session_id, owner=owner))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self.run(self.agent.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class SyncSession:
    def __init__(self, owner: SyncAgent, session: Session) -> None:
        self._agent = owner
        self.session = session
        self.id = session.id

    def attach(self, path: str | Path, modality: str | None = None) -> Artifact:
        return self._agent.run(self.session.attach(path, modality))

    def attach_bytes(self, data: bytes, modality: str | None = None) -> Artifact:
        return self._agent.run(self.session.attach_bytes(data, modality))

    def attach_file(self, stream: BinaryIO, modality: str | None = None) -> Artifact:
        return self._agent.run(self.session.attach_file(stream, modality))

    def attach_dataset(self, dataset: Any, modality: str | None = None) -> Artifact:
        return self._agent.run(self.session.attach_dataset(dataset, modality))

    def ask(self, question: str) -> Answer:
        return self._agent.run(self.session.ask(question))

    def approve(self, approved: bool) -> Answer:
        return self._agent.run(self.session.approve(approved))

    def history(self) -> list[Message]:
        return self._agent.run(self.session.history())

    def delete(self) -> None:
        self._agent.run(self.session.delete())

    def artifact(self, artifact_id: str) -> Artifact:
        return self._agent.run(self.session.artifact(artifact_id))
