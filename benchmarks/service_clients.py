"""The client side of the service load benchmark: sessions that each upload the image and ask their turns over
Server-Sent Events, all at once; a restart of the service in the middle; and the check, through the API, that
every turn a client saw finish is in its session's history exactly once.

The restart: when the ``restart_at``-th turn reports its tool call started (so that turn, and others, are in
flight), the service gets SIGTERM; it lets running turns finish, exits, and is started again on the same home and
port. A turn whose request failed meanwhile is recovered without asking it twice: a request that never connected
is asked again; one that was cut is looked up first (``resume`` if the session stopped midway, its answer taken
from the history if it finished, asked again only if the question never reached the session). Afterwards each
session asks one more question: sessions continue by id in the new process.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from benchmarks.service_load import ServedProcess, TurnRecord, question

FOLLOW_UP: Final = "read_dicom_header once more, after the restart"
MAX_ATTEMPTS: Final = 3


@dataclass
class Restart:
    at_turn: int  # the turn (by order of tool_started) in flight when SIGTERM was sent
    record: tuple[int, int]  # that turn's session and turn numbers
    signalled_at: float  # time.monotonic()
    exit_status: int | None = None  # -SIGTERM: uvicorn shut down gracefully and re-raised the signal
    down_s: float | None = None  # SIGTERM to the new process answering /v1/health


@dataclass
class LoadReport:
    session_ids: list[str]
    records: list[TurnRecord]
    wall_s: float
    restart: Restart | None
    continued: int = 0  # sessions whose follow-up question after the run was answered with its tool call
    problems: list[str] = field(default_factory=list)  # history checks that failed: lost, repeated, changed turns


def in_history(messages: list[dict[str, Any]], asked: str) -> tuple[int, str | None]:
    """How often ``asked`` is a user message, and the last assistant text that answered its first occurrence."""
    count, answer, open_turn = 0, None, False
    for message in messages:
        if message.get("role") == "user":
            open_turn = message.get("content") == asked and count == 0
            count += message.get("content") == asked
        elif open_turn and message.get("role") == "assistant" and message.get("content"):
            answer = str(message["content"])
    return count, answer


class ServiceLoad:
    def __init__(self, served: ServedProcess, token: str, image: bytes, *, sessions: int, turns: int,
                 restart_at: int | None) -> None:
        self.served, self.image, self.sessions, self.turns = served, image, sessions, turns
        self.restart_at = restart_at
        self.headers = {"Authorization": f"Bearer {token}"}
        self.up = asyncio.Event()
        self.tools_started = 0
        self.wall_s = 0.0
        self.restart: Restart | None = None
        self._restarting: asyncio.Task[None] | None = None

    def connect(self) -> httpx.AsyncClient:
        """The client of the run (``async with load.connect() as load.client``): a connection per session."""
        # idle connections are dropped after 2 s, before the service's keep-alive timeout (5 s) can close one
        # under a request that is being sent
        limits = httpx.Limits(max_connections=self.sessions + 16, max_keepalive_connections=self.sessions + 16,
                              keepalive_expiry=2.0)
        return httpx.AsyncClient(base_url=self.served.url, headers=self.headers, limits=limits,
                                 timeout=httpx.Timeout(300, connect=10))

    async def run(self) -> LoadReport:
        """The whole load on its own: :meth:`open`, a :meth:`round` per turn, :meth:`finish`."""
        async with self.connect() as self.client:
            ids = await self.open()
            records = [await self.round(ids, turn) for turn in range(self.turns)]
            return await self.finish(ids, [record for done in records for record in done])

    async def open(self) -> list[str]:
        """A warm-up turn (a process's first pays one-off costs; not timed), then the sessions with their image."""
        self.up.set()
        await self._ask(await self._open(), TurnRecord(-1, 0, question(-1, 0)))
        return list(await asyncio.gather(*(self._open() for _ in range(self.sessions))))

    async def round(self, ids: list[str], turn: int) -> list[TurnRecord]:
        """Turn ``turn`` of every session at once; returns when they have all been answered (or failed)."""
        started = time.perf_counter()
        records = list(await asyncio.gather(*(self._turn(index, session_id, turn)
                                              for index, session_id in enumerate(ids))))
        self.wall_s += time.perf_counter() - started
        return records

    async def finish(self, ids: list[str], records: list[TurnRecord]) -> LoadReport:
        """After the restart (waited for): a follow-up question in every session, then the history check."""
        if self._restarting is not None:
            await self._restarting
        report = LoadReport(ids, records, self.wall_s, self.restart)
        report.continued = sum(await asyncio.gather(*(self._follow_up(*pair) for pair in enumerate(ids))))
        for index, session_id in enumerate(ids):
            report.problems += await self.check(index, session_id, [r for r in records if r.session == index])
        return report

    async def _open(self) -> str:
        created = await self.client.post("/v1/sessions")
        created.raise_for_status()
        session_id = str(created.json()["id"])
        uploaded = await self.client.post(f"/v1/sessions/{session_id}/images", content=self.image,
                                          headers={"Content-Type": "application/dicom"})
        uploaded.raise_for_status()
        return session_id

    async def _turn(self, index: int, session_id: str, turn: int) -> TurnRecord:
        record = TurnRecord(index, turn, question(index, turn))
        started = time.perf_counter()
        await self._ask(session_id, record)
        if record.recovered is None and record.answer is not None:
            record.seconds = time.perf_counter() - started
        return record

    async def _ask(self, session_id: str, record: TurnRecord) -> None:
        """The turn over SSE; after a failed request, the recovery the module docstring describes."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                if attempt == 0:
                    await self._stream(session_id, record)
                else:
                    await self.recover(session_id, record)
                return
            except httpx.ConnectError:  # this request never reached a service (an earlier cut one still may have)
                record.recovered = "re-asked" if record.recovered in (None, "re-asked") else "cut"
            except httpx.TransportError:  # cut: the turn may have started, or finished
                record.recovered = "cut"
            record.numbers.clear()
            record.kinds.clear()
            await self.up.wait()
        record.error = record.error or "unrecovered"

    async def recover(self, session_id: str, record: TurnRecord) -> None:
        """Complete a turn whose request failed (``recovered``: "cut" or "re-asked"), asking it again only if it
        never reached the session."""
        if record.recovered == "cut":
            detail = await self.client.get(f"/v1/sessions/{session_id}")
            detail.raise_for_status()
            if detail.json()["unfinished"]:
                record.recovered = "resumed"
                resumed = await self.client.post(f"/v1/sessions/{session_id}/resume")
                resumed.raise_for_status()
                record.answer, record.answered_at = resumed.json()["text"], time.monotonic()
                return
            count, answer = in_history(await self.history(session_id), record.question)
            if count:
                record.recovered = "finished"
                record.answer, record.answered_at = answer, time.monotonic()
                if answer is None:
                    record.error = "asked_but_not_answered"
                return
            record.recovered = "re-asked"
        await self._stream(session_id, record)

    async def _stream(self, session_id: str, record: TurnRecord) -> None:
        """The turn's event stream, block by block; only the blocks that end a turn have their JSON read (the
        client's parsing is timed with the service: kept small, as a client on another machine would be)."""
        async with self.client.stream("POST", f"/v1/sessions/{session_id}/messages/stream",
                                      json={"question": record.question}) as response:
            if response.status_code != 200:
                await response.aread()
                record.error = f"http_{response.status_code}"
                return
            buffer = b""
            async for chunk in response.aiter_bytes():
                *blocks, buffer = (buffer + chunk).split(b"\n\n")
                for block in blocks:
                    lines = block.split(b"\n", 2)
                    if len(lines) == 3:
                        self._event(record, *lines)
                    elif not block.startswith(b":"):  # not a keep-alive comment either
                        record.error = "malformed_event"
        if record.answer is None and record.error is None:
            raise httpx.RemoteProtocolError("the event stream ended before the turn did")

    def _event(self, record: TurnRecord, number: bytes, kind_line: bytes, data: bytes) -> None:
        """One block as the service writes it (``id: N``, ``event: KIND``, ``data: JSON``, in this order)."""
        kind = kind_line.removeprefix(b"event:").strip().decode()
        record.numbers.append(int(number.removeprefix(b"id:")))
        record.kinds.append(kind)
        if kind == "answer":
            record.answer = str(json.loads(data.removeprefix(b"data:")).get("text"))
            record.answered_at = time.monotonic()
        elif kind == "error":
            record.error = str(json.loads(data.removeprefix(b"data:")).get("code"))
        elif kind == "tool_started" and record.session >= 0:
            self.tools_started += 1
            if self.tools_started == self.restart_at:
                self.restart = Restart(self.tools_started, (record.session, record.turn), time.monotonic())
                self.up.clear()
                self.served.terminate()  # now, while this turn (and others) are in flight
                self._restarting = asyncio.create_task(self._start_again(self.restart))

    async def _start_again(self, restart: Restart) -> None:
        restart.exit_status = await asyncio.to_thread(self.served.wait_stopped)
        await asyncio.to_thread(self.served.start)
        restart.down_s = time.monotonic() - restart.signalled_at
        self.up.set()

    async def _follow_up(self, index: int, session_id: str) -> bool:
        record = TurnRecord(index, self.turns, FOLLOW_UP)
        await self._ask(session_id, record)
        return record.answer is not None and record.error is None

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while True:
            page = await self.client.get(f"/v1/sessions/{session_id}/messages",
                                         params={"limit": 500, "offset": len(messages)})
            page.raise_for_status()
            messages += page.json()["messages"]
            if not page.json()["messages"] or len(messages) >= page.json()["total"]:
                return messages

    async def check(self, index: int, session_id: str, records: list[TurnRecord]) -> list[str]:
        """Every turn asked once, in order, and each answer the client saw is the one in the history."""
        messages = await self.history(session_id)
        problems = []
        asked = [str(message.get("content")) for message in messages if message.get("role") == "user"]
        if asked != [record.question for record in records] + [FOLLOW_UP]:
            problems.append(f"session {index}: {len(asked)} questions in the history, {len(records) + 1} asked "
                            "(or not in order)")
        for record in records:
            count, answer = in_history(messages, record.question)
            if record.answer is not None and count == 0:
                problems.append(f"session {index} turn {record.turn}: finished, not in the history (lost)")
            elif count > 1:
                problems.append(f"session {index} turn {record.turn}: {count} times in the history (repeated)")
            elif record.answer is not None and answer != record.answer:
                problems.append(f"session {index} turn {record.turn}: the history's answer is not the one seen")
        return problems
