"""Structured logs: JSON lines with request and session ids, and nothing from data even when a caller passes it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from medagent.logs import configure_logging, log_context


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = configure_logging("DEBUG", stream, logger="medagent.test_logs")
    yield logging.getLogger("medagent.test_logs.child"), stream
    logging.getLogger("medagent.test_logs").removeHandler(handler)


def _read(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_json_with_the_ids_of_the_work_that_logged_it(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines
    logger.info("outside")
    with log_context(request_id="req-1", session_id="sess-9"):
        logger.debug("turn finished", extra={"fields": {"tool_calls": 2, "route": "/v1/sessions", "ok": True}})

        async def task() -> None:
            logger.warning("in a task it started")

        asyncio.run(task())
    first, second, third = _read(stream)
    assert (first["request_id"], first["session_id"]) == (None, None)
    assert (second["request_id"], second["session_id"], second["level"]) == ("req-1", "sess-9", "DEBUG")
    assert second["fields"] == {"tool_calls": 2, "route": "/v1/sessions", "ok": True}
    assert third["request_id"] == "req-1" and third["logger"] == "medagent.test_logs.child"


def test_nothing_from_data_reaches_a_line(lines: tuple[logging.Logger, io.StringIO]) -> None:
    """Arguments are never merged into the message, free-text fields are dropped, secrets are redacted, control
    characters cannot start a line, and an exception is logged by its type and code only."""
    logger, stream = lines
    logger.info("patient %s uploaded", "Zyxwv^Quintessa")
    logger.info("connecting with password=hunter2 to the store\nFORGED line")
    logger.info("note", extra={"fields": {"comment": "call Quintessa at 555-0199", "count": 3}})
    try:
        raise ValueError("MRN-5550199 is not valid")
    except ValueError:
        logger.exception("upload refused")
    text = stream.getvalue()
    for leaked in ("Quintessa", "hunter2", "MRN-5550199", "555-0199"):
        assert leaked not in text
    merged, secret, note, failure = _read(stream)
    assert merged["message"] == "patient %s uploaded" and "\n" not in secret["message"]
    assert note["fields"] == {"comment": "<str>", "count": 3}
    assert failure["error"] == {"type": "ValueError", "code": None} and len(text.splitlines()) == 4
