"""Errors of the OpenAI-compatible facade, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

OpenAI's clients turn that shape and the status into their own exceptions (``AuthenticationError``,
``NotFoundError``, ``RateLimitError``, ...), so every refusal on the facade's routes is answered so: a
missing key, a rate limit, a body too large, a request that does not validate, a turn that failed. The
codes are medagent's own (stable, free of patient data); invalid requests are ``400`` as OpenAI answers them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from medagent.errors import MedagentError
from medagent.service.problems import InvalidRequest, TurnFailed, status_for

log = logging.getLogger("medagent.service.openai")


class ModelNotFound(MedagentError):
    family = "configuration"
    code = "model_not_found"


class ImageURLNotSupported(InvalidRequest):
    """An ``image_url`` that is not a ``data:`` URL: the service never fetches a URL (no server-side requests)."""

    code = "image_url_not_supported"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


_STATUS: Final[dict[str, int]] = {"invalid_request": 400, "image_url_not_supported": 400,
                                  "context_length_exceeded": 400, "model_not_found": 404}
_HTTP_CODES: Final[dict[int, str]] = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                                      413: "payload_too_large"}


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(status: int, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def from_exception(exc: Exception) -> JSONResponse:
    """The OpenAI-shaped answer to what a facade route raised (the service's own handlers answer the rest)."""
    if isinstance(exc, MedagentError):
        status = _STATUS.get(exc.code, status_for(exc.code, exc.family))
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc.details.get("retry_after_s"), int):
            headers["Retry-After"] = str(exc.details["retry_after_s"])
        log.info("refused", extra={"fields": {"code": exc.code}})
        return openai_error(status, exc.code, exc.message, headers=headers)
    if isinstance(exc, TurnFailed):
        code, family = str(exc.data.get("code", "internal")), str(exc.data.get("family", "infrastructure"))
        log.info("turn failed", extra={"fields": {"code": code}})
        return openai_error(_STATUS.get(code, status_for(code, family)), code, str(exc.data.get("message", "")))
    if isinstance(exc, RequestValidationError):
        first: dict[str, Any] = dict(next(iter(exc.errors()), {}))
        where = ".".join(str(part) for part in first.get("loc", ())[1:8]) or None
        message = f"the request does not match the API: {str(first.get('msg', ''))[:200]}"
        return openai_error(400, "invalid_request", message, param=where)
    if isinstance(exc, HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "the request was refused"
        return openai_error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message,
                            headers=getattr(exc, "headers", None))
    log.error("unexpected failure: %s", type(exc).__name__, extra={"fields": {"exception_type": type(exc).__name__}})
    return openai_error(500, "internal", "the service failed; the X-Request-Id header names it in the service's log")


class OpenAIRoute(APIRoute):
    """A route whose every refusal, its key check and body validation included, is OpenAI-shaped."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - answered in OpenAI's shape, unexpected ones logged by type
                return from_exception(exc)

        return route
