"""Micro-batching: concurrent calls gathered into one batch, results routed back to each caller."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: Processes a batch; returns one result or exception per item, in order.
BatchFunction = Callable[[list[ItemT]], list[ResultT | BaseException]]


@dataclass
class _LoopState(Generic[ItemT, ResultT]):
    pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    drainer: asyncio.Task[None] | None = None


class MicroBatcher(Generic[ItemT, ResultT]):
    """Collects up to ``max_batch_size`` items, waiting at most ``max_wait_ms`` after the first.

    The batch function runs in ``executor`` (off the event loop). If it raises for a whole
    batch, each item is retried alone so that one bad input fails only its own caller.
    """

    def __init__(
        self,
        process: BatchFunction[ItemT, ResultT],
        executor: Executor,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._process = process
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState[ItemT, ResultT]] = (
            weakref.WeakKeyDictionary()
        )
        self.batch_sizes: list[int] = []

    async def submit(self, item: ItemT) -> ResultT:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        future: asyncio.Future[ResultT] = loop.create_future()
        state.pending.append((item, future))
        if len(state.pending) >= self.max_batch_size:
            state.full.set()
        if state.drainer is None or state.drainer.done():
            state.drainer = loop.create_task(self._drain(state))
        return await future

    async def _drain(self, state: _LoopState[ItemT, ResultT]) -> None:
        loop = asyncio.get_running_loop()
        while state.pending:
            if len(state.pending) < self.max_batch_size and self.max_wait_s > 0:
                state.full.clear()
                try:
                    await asyncio.wait_for(state.full.wait(), timeout=self.max_wait_s)
                except TimeoutError:
                    pass
            batch = state.pending[: self.max_batch_size]
            del state.pending[: self.max_batch_size]
            live = [(item, future) for item, future in batch if not future.done()]
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self._run_isolated, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # noqa: BLE001 - never leave a caller waiting on a dead drainer
                results = [exc] * len(live)
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _run_isolated(self, items: list[ItemT]) -> list[ResultT | BaseException]:
        try:
            results = self._process(items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            return results
        except Exception as batch_error:  # noqa: BLE001 - a model raises anything; retried item by item below
            if len(items) == 1:
                return [batch_error]
            isolated: list[ResultT | BaseException] = []
            for item in items:
                try:
                    isolated.extend(self._process([item]))
                except Exception as item_error:  # noqa: BLE001 - the item's own failure is its result
                    isolated.append(item_error)
            return isolated
