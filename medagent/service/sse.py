"""Server-Sent Events: a turn's typed events as ``event: <kind>`` / ``id: <n>`` / ``data: <json>`` blocks.

Each event is one ``data`` line (JSON escapes every newline), numbered from 1 in ``id``. The stream ends
after the turn's last event (``answer``, ``approval_requested`` or ``error``); an idle stream carries a
comment line every few seconds, so proxies do not close it while a planner thinks. A client that goes away
leaves the turn running: its answer is in the session's history.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from medagent.service.turns import Turn

MEDIA_TYPE = "text/event-stream"


def encode(kind: str, data: dict[str, Any], number: int) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"id: {number}\nevent: {kind}\ndata: {payload}\n\n".encode()


def parse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event, data)`` pairs of an event stream's text (comments skipped): for clients and tests."""
    events: list[tuple[str, dict[str, Any]]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        kind, lines = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                lines.append(line[5:].strip())
        if lines:
            events.append((kind, json.loads("\n".join(lines))))
    return events


async def _body(turn: Turn, keepalive_s: float) -> AsyncIterator[bytes]:
    number = 0
    async for event in turn.events_with_keepalive(keepalive_s):
        if event is None:
            yield b": keepalive\n\n"
            continue
        number += 1
        yield encode(event.kind, event.data, number)


def event_stream(turn: Turn, keepalive_s: float) -> StreamingResponse:
    return StreamingResponse(_body(turn, keepalive_s), media_type=MEDIA_TYPE,
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
