"""The public library surface: an Agent serving many sessions, each resumable by id.

    async with Agent(AgentConfig()) as agent:          # embedded planner when no endpoint is set
        session = agent.session()
        await session.attach("chest.dcm")
        answer = await session.ask("Is there cardiomegaly?")
        async for event in session.events("And the lungs?"):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Literal, Self

from pydantic import BaseModel, Field

from medagent.agents.planner import Message, Planner, PlannerConfig
from medagent.assembly import Assembly
from medagent.config import Settings
from medagent.errors import (
    ConfigurationError,
    CorruptFile,
    FileTooLarge,
    MedagentError,
    SessionNotFound,
    UnknownArtifact,
)
from medagent.names import check_name
from medagent.tools.artifacts import Artifact, ArtifactKind, referenced_ids
from medagent.tools.builtin import Toolbox
from medagent.tools.spec import Tool
from medagent.workflows.agent_loop import TOKEN_EVENTS, AgentLoop, LoopSettings
from medagent.workflows.checkpoint import open_checkpointer

INTERRUPT = "__interrupt__"  # the key of a run's stopping interrupts in LangGraph's streamed state (private there)

EventKind = Literal["token", "tool_started", "tool_finished", "approval_requested", "answer", "error"]


class NoApprovalPending(ConfigurationError):
    """``approve`` on a session with no call waiting for a human's decision."""

    code = "no_approval_pending"


class AgentConfig(BaseModel):
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    checkpoint_url: str | None = Field(
        default=None, description="SQLite file path or postgresql:// URL; default: sessions.sqlite in the data dir"
    )


class Event(BaseModel):
    kind: EventKind
    data: dict[str, Any] = Field(default_factory=dict)


class Answer(BaseModel):
    session_id: str
    text: str | None
    model: str | None = Field(description="planner model id as the server reported it")
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    pending_approval: dict[str, Any] | None = None

    @property
    def provenance(self) -> list[dict[str, Any]]:
        return [call["output"]["provenance"] for call in self.tool_calls
                if call.get("ok") and "provenance" in call.get("output", {})]


class Agent:
    def __init__(self, config: AgentConfig | None = None, *, settings: Settings | None = None,
                 planner: Planner | None = None, toolbox: Toolbox | None = None,
                 tools: Iterable[Tool[Any, Any]] = ()) -> None:
        """``tools``: your own tools (``@tool``, ``expert_tool``), offered beside the built-in and plugin ones.
        The parts come from the composition root, :class:`medagent.assembly.Assembly`."""
        self.config = config or AgentConfig()
        self.settings = settings or Settings()
        self._planner = planner
        self.root = Assembly(self.settings, tools=tools, toolbox=toolbox)
        self._stack = contextlib.AsyncExitStack()
        self._graph: Any = None
        self._durability: Literal["exit", "async"] = "async"
        # one run at a time per session id (see Session): a lock lives while someone holds or awaits it
        self._session_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def session_lock(self, session_id: str) -> asyncio.Lock:
        lock = self._session_locks.get(session_id)
        if lock is None:
            lock = self._session_locks[session_id] = asyncio.Lock()
        return lock

    @property
    def planner(self) -> Planner:
        if self._planner is None:
            raise RuntimeError("the agent is not started")
        return self._planner

    @property
    def toolbox(self) -> Toolbox:
        return self.root.toolbox

    async def start(self) -> Self:
        if self._graph is not None:
            return self
        try:
            if self._planner is None:
                self._planner = await self._start_planner()
            checkpoint_url = self.config.checkpoint_url or str(self.settings.home / "sessions.sqlite")
            checkpointer = await self._stack.enter_async_context(open_checkpointer(checkpoint_url))
            self._graph = AgentLoop(self._planner, self.toolbox, self.config.loop).compile(checkpointer)
            # checkpoints kept in memory die with the process, so nothing resumes from one taken mid-run: write
            # the state once when a run ends (answered, failed or waiting for approval), not after every step
            self._durability = "exit" if self.config.checkpoint_url == "memory://" else "async"
        except BaseException:  # `async with` runs no __aexit__ after a failed start: stop what already began
            await self.aclose()
            raise
        return self

    async def _start_planner(self) -> Planner:
        # an embedded server starts in the background: sessions open and images attach meanwhile
        return await self.root.planner(self.config.planner, wait=False)

    async def aclose(self) -> None:
        if self._planner is not None:
            await self._planner.aclose()
        await self._stack.aclose()
        await self.root.aclose()  # the planners it built, the servers they started, the tools
        self._graph = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def session(self, session_id: str | None = None, *, owner: str | None = None) -> Session:
        """A session by id (a new one without). ``owner``: the tenant it belongs to (an opaque id, e.g. an API key's
        id): a session, its images and artifacts are reachable only with the owner it was first used with; any
        other owner gets :class:`SessionNotFound`, as for an id that does not exist."""
        if self._graph is None:
            raise RuntimeError("start the agent first (async with Agent(...) as agent)")
        if session_id is not None:
            check_name(session_id, "the session id")
        if owner is not None:
            check_name(owner, "the owner id")
        return Session(self, session_id or uuid.uuid4().hex[:12], owner)

    def scratch_session(self, *, owner: str | None = None) -> Session:
        """A session for one piece of work, e.g. one study case: its id is new and random (a whole uuid4), so no
        other session object uses it unless handed the id, and it reads its state from what its own runs ended
        with instead of from the checkpointer (a read per call saved). ``delete()`` it when done."""
        if self._graph is None:
            raise RuntimeError("start the agent first (async with Agent(...) as agent)")
        if owner is not None:
            check_name(owner, "the owner id")
        return Session(self, uuid.uuid4().hex, owner, scratch=True)


class Session:
    """One conversation. Isolated from other sessions; its state lives in the checkpointer under its id.

    Runs of one session id are serialised within an :class:`Agent`: a second ``ask`` (or ``events``,
    ``approve``, ``finish``) on a session that is answering waits for the first to finish, then runs
    on the updated conversation; each caller gets its own answer and tool trace. Two processes sharing
    one checkpoint database are not coordinated: give each process its own sessions.
    """

    def __init__(self, agent: Agent, session_id: str, owner: str | None = None, *, scratch: bool = False) -> None:
        self.agent = agent
        self.id = session_id
        self.owner = owner
        self._new_images: list[str] = []
        self._error: MedagentError | None = None
        # a scratch session (Agent.scratch_session): the state its last run ended with, which is the stored one as
        # nobody else runs it; None when unknown (after an interrupt or an error): read from the checkpointer
        self._scratch = scratch
        self._known: dict[str, Any] | None = {} if scratch else None

    @property
    def _config(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.id}}

    async def _values(self) -> dict[str, Any]:
        """The session's stored state, if this owner may see it (a session not yet used is empty: anyone's)."""
        if self._known is not None:
            return dict(self._known)
        values = dict((await self.agent._graph.aget_state(self._config)).values)
        if values and values.get("owner") != self.owner:
            raise SessionNotFound("no such session")
        return values

    async def exists(self) -> bool:
        """True when this owner's session has run at least once."""
        return bool(await self._values())

    async def delete(self) -> None:
        """Remove this owner's session: its conversation and every checkpoint of it. Afterwards the id is
        unknown (its history is empty and its artifacts unreachable through it). Images and artifacts stay in
        the content-addressed store, de-identified, because another session may hold the same ones. Waits for
        a running turn of this session to end first."""
        async with self.agent.session_lock(self.id):
            await self._values()  # another owner's session: SessionNotFound, nothing deleted
            await self.agent._graph.checkpointer.adelete_thread(self.id)
        if self._scratch:
            self._known = {}
        self._new_images.clear()
        self._error = None

    async def attach(self, path: str | Path, modality: str | None = None) -> Artifact:
        await self._values()
        artifact = self.agent.toolbox.remembered(path, modality)  # attached before: no thread hop, no decoding
        if artifact is None:
            artifact = await asyncio.to_thread(self.agent.toolbox.attach, path, modality)
        self._new_images.append(artifact.id)
        return artifact

    async def attach_bytes(self, data: bytes, modality: str | None = None) -> Artifact:
        """An image given as bytes (an upload): the same limits and de-identification as a file."""
        await self._values()
        artifact = await asyncio.to_thread(self.agent.toolbox.attach_bytes, bytes(data), modality)
        self._new_images.append(artifact.id)
        return artifact

    async def attach_file(self, stream: BinaryIO, modality: str | None = None) -> Artifact:
        """An image read from a binary file-like object, never more than the size limit (plus one byte)."""
        limit = self.agent.settings.limits.max_file_bytes
        data = await asyncio.to_thread(stream.read, limit + 1)
        if len(data) > limit:
            raise FileTooLarge(f"the image is over {limit} bytes", size=len(data), limit=limit)
        return await self.attach_bytes(data, modality)

    async def attach_dataset(self, dataset: Any, modality: str | None = None) -> Artifact:
        """A ``pydicom.Dataset`` (e.g. from a PACS): written to bytes in memory, then attached as a file is."""
        import io

        buffer = io.BytesIO()
        try:
            dataset.save_as(buffer, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types, with values in their messages
            raise CorruptFile(f"the DICOM dataset cannot be written as a file ({type(exc).__name__})") from None
        return await self.attach_bytes(buffer.getvalue(), modality)

    async def artifact(self, artifact_id: str) -> Artifact:
        """An artifact of this session: one of its images or something its tool calls wrote; else
        :class:`UnknownArtifact` (whether it exists for another session is not said)."""
        values = await self._values()
        reachable = {*values.get("image_ids", []), *self._new_images,
                     *(found for record in values.get("tool_records", [])
                       for found in referenced_ids(record.get("output")))}
        if artifact_id not in reachable:
            raise UnknownArtifact("no such artifact in this session")
        return self.agent.toolbox.store.get(artifact_id)

    def attach_stored(self, image_id: str) -> Artifact:
        """An image already in the agent's artifact store (loaded and de-identified by medagent), attached to this
        session as a file would be; :class:`UnknownArtifact` for an id that is no stored image."""
        artifact = self.agent.toolbox.store.get(image_id)
        if artifact.kind is not ArtifactKind.IMAGE:
            raise UnknownArtifact(f"artifact {image_id!r} is a {artifact.kind.value}, not an image")
        self._new_images.append(artifact.id)
        return artifact

    async def state(self) -> dict[str, Any]:
        return await self._values()

    async def history(self) -> list[Message]:
        return list((await self.state()).get("messages", []))

    async def image_ids(self) -> list[str]:
        return list((await self.state()).get("image_ids", [])) + list(self._new_images)

    async def events(self, question: str) -> AsyncIterator[Event]:
        # the owner is checked where the run starts, under the session's lock (_run_locked)
        graph_input = {"messages": [{"role": "user", "content": question}], "image_ids": list(self._new_images),
                       "owner": self.owner}
        self._new_images.clear()
        async for event in self._run(graph_input):
            yield event

    async def resume(self, approved: bool) -> AsyncIterator[Event]:
        """Answer a pending approval request and continue; an error event when none is pending (a decision
        must never reach a guarded call that no one was shown, such as one of a run that died before asking)."""
        from langgraph.types import Command

        async with self.agent.session_lock(self.id):
            await self._values()
            if not (await self.agent._graph.aget_state(self._config)).interrupts:
                self._error = NoApprovalPending("this session has no tool call waiting for approval")
                yield Event(kind="error", data=self._error.to_dict())
                return
            async for event in self._run_locked(Command(resume={"approved": approved})):
                yield event

    async def unfinished(self) -> bool:
        """True when a run of this session stopped midway (the process died): ``proceed()`` completes it."""
        await self._values()
        snapshot = await self.agent._graph.aget_state(self._config)
        return bool(snapshot.next) and not snapshot.interrupts

    async def proceed(self) -> AsyncIterator[Event]:
        """Continue a run from its last checkpoint."""
        await self._values()
        async for event in self._run(None):
            yield event

    async def _run(self, graph_input: Any) -> AsyncIterator[Event]:
        async with self.agent.session_lock(self.id):
            async for event in self._run_locked(graph_input):
                yield event

    async def _run_locked(self, graph_input: Any) -> AsyncIterator[Event]:
        graph = self.agent._graph
        before = len((await self.state()).get("tool_records", []))
        # the state after each step comes with the stream: the last one is the stored state, unless the run stopped
        # for an approval (then the stream's carries the interrupt) or on an error
        values: dict[str, Any] | None = None
        interrupts: tuple[Any, ...] = ()
        self._known = None
        try:
            async for mode, chunk in graph.astream(graph_input, self._config, stream_mode=["custom", "values"],
                                                   durability=self.agent._durability):
                if mode == "custom":
                    yield Event(kind=chunk.pop("event"), data=chunk)
                else:
                    values = chunk
                    interrupts = interrupts or chunk.get(INTERRUPT, ())
        except MedagentError as exc:
            self._error = exc
            yield Event(kind="error", data=exc.to_dict())
            return
        if values is None:  # nothing ran (e.g. proceed() on a finished run): the stored state as it is
            snapshot = await graph.aget_state(self._config)
            values, interrupts = snapshot.values, snapshot.interrupts
        if interrupts:
            yield Event(kind="approval_requested", data=dict(interrupts[0].value))
            return
        if self._scratch:
            self._known = values
        yield Event(kind="answer", data={"text": values.get("answer"), "model": values.get("model"),
                                         "tool_calls": values.get("tool_records", [])[before:]})

    async def ask(self, question: str) -> Answer:
        return await self._collect(self.events(question))

    async def approve(self, approved: bool) -> Answer:
        return await self._collect(self.resume(approved))

    async def finish(self) -> Answer:
        """Complete a run interrupted by a crash; see :meth:`unfinished`."""
        return await self._collect(self.proceed())

    async def _collect(self, events: AsyncIterator[Event]) -> Answer:
        collecting = TOKEN_EVENTS.set(False)  # only the answer is returned: no token events to make
        try:
            return await self._answer(events)
        finally:
            TOKEN_EVENTS.reset(collecting)

    async def _answer(self, events: AsyncIterator[Event]) -> Answer:
        calls: list[dict[str, Any]] = []
        # closed on the way out: a run left suspended would hold the session's lock until garbage collection
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if event.kind == "tool_finished":
                    calls.append(event.data)
                elif event.kind == "error":
                    assert self._error is not None
                    raise self._error
                elif event.kind == "approval_requested":
                    return Answer(session_id=self.id, text=None, model=None, tool_calls=calls,
                                  pending_approval=event.data)
                elif event.kind == "answer":
                    return Answer(session_id=self.id, text=event.data["text"], model=event.data["model"],
                                  tool_calls=event.data["tool_calls"])
        raise RuntimeError("the agent loop ended without an answer")

