"""Turns run as tasks of their own: a client that goes away does not stop one, and shutdown waits for them.

A request that asks a question (or decides an approval) starts a :class:`Turn`: a task that drives the
library's event stream to its end and queues the events; the request reads them (all of them for a JSON
answer, as they come for Server-Sent Events). When the turn ends it writes its audit record: the tools
called (with the SHA-256 of their arguments), the planner's model id as served and each expert's model id
and weight hash, and how it ended. On shutdown :meth:`Turns.shutdown` lets running turns finish for a
grace period, then stops the rest; LangGraph has checkpointed each at its last completed step, and
``POST /v1/sessions/{id}/resume`` completes it after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from medagent.api import Event
from medagent.errors import MedagentError
from medagent.service.audit import AuditEntry, ModelUse, ToolUse, sha256_hex
from medagent.service.problems import ServiceBusy, TurnFailed

log = logging.getLogger("medagent.service.turns")
_TERMINAL = frozenset({"answer", "approval_requested", "error"})


class Turn:
    def __init__(self, events: AsyncIterator[Event], audit: AuditEntry,
                 record: Callable[[AuditEntry], Awaitable[None]]) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.audit = audit.model_copy(update={"kind": "turn", "status": None})
        self._record = record
        self.task = asyncio.create_task(self._pump(events))

    async def _pump(self, events: AsyncIterator[Event]) -> None:
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    self._observe(event)
                    self.queue.put_nowait(event)
        except asyncio.CancelledError:
            self.audit.outcome = "stopped"  # checkpointed at its last completed step: resumable
            raise
        except MedagentError as exc:
            self._emit(Event(kind="error", data=exc.to_dict()))
        except Exception as exc:  # noqa: BLE001 - one failed turn must not take the service down; logged by type
            log.error("turn failed: %s", type(exc).__name__, extra={"fields": {"exception_type": type(exc).__name__}})
            self._emit(Event(kind="error", data={"family": "infrastructure", "code": "internal",
                                                 "message": "the turn failed; the request id names it in the log"}))
        finally:
            self.queue.put_nowait(None)
            if self.audit.outcome is None:
                self.audit.outcome = "ended"
            with contextlib.suppress(Exception):
                await asyncio.shield(self._record(self.audit))

    def _emit(self, event: Event) -> None:
        self._observe(event)
        self.queue.put_nowait(event)

    def _observe(self, event: Event) -> None:
        data = event.data
        if event.kind == "tool_finished":
            error = data.get("error") or {}
            arguments = json.dumps(data.get("arguments"), sort_keys=True, separators=(",", ":"), default=str)
            if len(self.audit.tools) < 64:
                self.audit.tools.append(ToolUse(tool=str(data.get("tool"))[:200], arguments_sha256=sha256_hex(arguments),
                                                ok=bool(data.get("ok")), error_code=error.get("code")))
            provenance = (data.get("output") or {}).get("provenance") if isinstance(data.get("output"), dict) else None
            if isinstance(provenance, dict) and provenance.get("model_id"):
                self._model(ModelUse(role="expert", id=str(provenance["model_id"])[:300],
                                     weights_sha256=provenance.get("weights_sha256")))
        elif event.kind == "answer" and data.get("model"):
            self._model(ModelUse(role="planner", id=str(data["model"])[:300]))
        if event.kind in _TERMINAL:
            self.audit.outcome = event.kind if event.kind != "error" else f"error:{data.get('code')}"[:100]

    def _model(self, model: ModelUse) -> None:
        if model not in self.audit.models and len(self.audit.models) < 64:
            self.audit.models.append(model)

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self.queue.get()) is not None:
            yield event

    async def events_with_keepalive(self, every_s: float) -> AsyncIterator[Event | None]:
        """The events, with ``None`` whenever none came for ``every_s`` seconds (an idle stream's comment)."""
        while True:
            try:
                event = await asyncio.wait_for(self.queue.get(), every_s)
            except TimeoutError:
                yield None
                continue
            if event is None:
                return
            yield event

    async def answer(self, session_id: str) -> dict[str, Any]:
        """The turn's outcome as the library's ``Answer`` fields; a typed error raises (its HTTP status)."""
        calls: list[dict[str, Any]] = []
        async for event in self.events():
            if event.kind == "tool_finished":
                calls.append(event.data)
            elif event.kind == "error":
                raise _as_error(event.data)
            elif event.kind == "approval_requested":
                return {"session_id": session_id, "text": None, "model": None, "tool_calls": calls,
                        "pending_approval": event.data}
            elif event.kind == "answer":
                return {"session_id": session_id, "text": event.data.get("text"), "model": event.data.get("model"),
                        "tool_calls": event.data.get("tool_calls", calls), "pending_approval": None}
        raise _as_error({"family": "infrastructure", "code": "internal", "message": "the turn ended without an answer"})


def _as_error(data: dict[str, Any]) -> TurnFailed:
    return TurnFailed(data)


class Turns:
    """The turns running in this process, at most ``limit`` at once."""

    def __init__(self, limit: int, record: Callable[[AuditEntry], Awaitable[None]]) -> None:
        self.limit = limit
        self._record = record
        self._running: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, events: AsyncIterator[Event], audit: AuditEntry) -> Turn:
        if len(self._running) >= self.limit:
            raise ServiceBusy(f"{self.limit} turns are running; retry shortly", retry_after_s=2)
        turn = Turn(events, audit, self._record)
        self._running.add(turn.task)
        turn.task.add_done_callback(self._running.discard)
        return turn

    async def shutdown(self, grace_s: float) -> None:
        """Let running turns finish for ``grace_s`` seconds; stop the rest at their last checkpoint."""
        pending = set(self._running)
        if not pending:
            return
        log.info("waiting for running turns", extra={"fields": {"turns": len(pending)}})
        _done, late = await asyncio.wait(pending, timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("stopped turns at their last checkpoint", extra={"fields": {"turns": len(late)}})
            await asyncio.wait(late)
