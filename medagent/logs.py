"""Structured logs: one JSON object per line through standard ``logging``, with the request and session ids of
the work that logged it, and nothing that could be patient data.

    from medagent.logs import configure_logging, log_context
    configure_logging("INFO")                       # JSON lines on stderr
    with log_context(request_id="r-1", session_id="s-9"):
        logging.getLogger("medagent.service").info("turn finished", extra={"fields": {"tool_calls": 2}})

What reaches a line is medagent's own wording: messages are written to carry ids, codes and counts, never a value
from a file, a planner or a user. The formatter adds a second guard: secrets are redacted, control characters
escaped, every string capped, an exception logged by its type only (a traceback's text may quote input), and only
``fields`` of plain numbers, booleans and short tokens are kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from medagent.redaction import redact_text

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("medagent_request_id", default=None)
SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("medagent_session_id", default=None)
MAX_MESSAGE_CHARS = 500
MAX_FIELDS = 32
_TOKEN = re.compile(r"^[A-Za-z0-9_.:/-]{0,128}$")  # a field value kept as text: an id, a code, a route


@contextlib.contextmanager
def log_context(*, request_id: str | None = None, session_id: str | None = None) -> Iterator[None]:
    """Every line logged inside (in this task and the tasks it starts) carries these ids."""
    tokens = []
    if request_id is not None:
        tokens.append((REQUEST_ID, REQUEST_ID.set(request_id)))
    if session_id is not None:
        tokens.append((SESSION_ID, SESSION_ID.set(session_id)))
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


def _safe_field(value: Any) -> Any:
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and _TOKEN.match(value):
        return value
    return f"<{type(value).__name__}>"  # free text or structures are not logged, only that there was one


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage() if not record.args else record.msg  # arguments may be data: never merged
        text = redact_text("".join(ch if ch.isprintable() else " " for ch in str(message)))[:MAX_MESSAGE_CHARS]
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": text,
            "request_id": REQUEST_ID.get(), "session_id": SESSION_ID.get(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line["fields"] = {str(key)[:64]: _safe_field(value) for key, value in list(fields.items())[:MAX_FIELDS]}
        if record.exc_info and record.exc_info[0] is not None:
            error = record.exc_info[1]
            line["error"] = {"type": record.exc_info[0].__name__,
                             "code": _safe_field(getattr(error, "code", None))}
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"))


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None, logger: str = "medagent"
                      ) -> logging.Handler:
    """JSON lines from ``logger`` (and its children) at ``level`` on ``stream`` (stderr); returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    target = logging.getLogger(logger)
    for existing in list(target.handlers):
        if isinstance(existing.formatter, JsonFormatter):
            target.removeHandler(existing)
    target.addHandler(handler)
    target.setLevel(level)
    target.propagate = False
    return handler
