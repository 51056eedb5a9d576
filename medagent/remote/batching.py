"""Concurrent calls of one remote tool travel together: up to ``max_items`` gathered for at most ``max_wait_ms``
go as one batch request (one round trip; the service runs them as one model batch). A batch goes out without
waiting for the one before it, so encoding, transfer and the service's compute overlap."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any

from medagent.errors import MedagentError, RemoteExpertError, RemoteResponseInvalid
from medagent.remote.protocol import PROTOCOL_VERSION, BatchRequest, CallItem, ImagePayload
from medagent.remote.transport import Endpoint, typed

Answer = tuple[dict[str, Any], list[str]]  # one call's output and the ids of the artifacts it wrote
_Pending = tuple[CallItem, "asyncio.Future[Answer]"]


@dataclass
class _LoopState:
    pending: list[_Pending] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    drainer: asyncio.Task[None] | None = None
    sending: set[asyncio.Task[None]] = field(default_factory=set)


class RequestBatcher:
    def __init__(self, endpoint: Endpoint, tool: str, *, max_items: int, max_wait_ms: float) -> None:
        self.endpoint, self.tool = endpoint, tool
        self.max_items = max(1, max_items)
        self.max_wait_s = max_wait_ms / 1000.0
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self.batch_sizes: list[int] = []

    async def submit(self, arguments: dict[str, Any], images: dict[str, ImagePayload]) -> Answer:
        """The output of one call (JSON) and the artifact ids it wrote, or its typed error raised."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        future: asyncio.Future[Answer] = loop.create_future()
        state.pending.append((CallItem(arguments=arguments, images=images), future))
        if len(state.pending) >= self.max_items:
            state.full.set()
        if state.drainer is None or state.drainer.done():
            state.drainer = loop.create_task(self._drain(state))
        return await future

    async def _drain(self, state: _LoopState) -> None:
        while state.pending:
            if len(state.pending) < self.max_items and self.max_wait_s > 0:
                state.full.clear()
                try:
                    await asyncio.wait_for(state.full.wait(), timeout=self.max_wait_s)
                except TimeoutError:
                    pass
            batch = [(item, future) for item, future in state.pending[: self.max_items] if not future.done()]
            del state.pending[: self.max_items]
            if batch:
                self.batch_sizes.append(len(batch))
                task = asyncio.get_running_loop().create_task(self._send(batch))
                state.sending.add(task)  # held until done: a task nobody references may be collected
                task.add_done_callback(state.sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            request = BatchRequest(protocol=PROTOCOL_VERSION, items=[item for item, _ in batch])
            body = await asyncio.to_thread(request.model_dump_json)  # megabytes of pixels: off the event loop
            answer = await self.endpoint.post_batch(self.tool, body.encode(), len(batch))
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the typed error, none waits on
            failure = exc if isinstance(exc, MedagentError) else RemoteExpertError(
                f"the call to the expert service at {self.endpoint.where} failed ({type(exc).__name__})")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        for (_, future), result in zip(batch, answer.items, strict=True):
            if future.done():
                continue  # its caller gave up (timeout, cancellation)
            if result.ok and result.output is not None:
                future.set_result((result.output, list(result.artifacts)))
            else:
                future.set_exception(typed(result.error, self.endpoint.where) if result.error is not None else
                                     RemoteResponseInvalid(f"the expert service at {self.endpoint.where} answered "
                                                           "a call with neither output nor error"))
