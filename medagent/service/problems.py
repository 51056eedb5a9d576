"""How the service refuses: typed errors as ``{"error": {"family", "code", "message"}}`` with a fitting status.

medagent's errors already carry a stable code and a message free of patient data; here each is given its
HTTP status. An id that does not exist and one that belongs to another key get the same ``404``. Nothing
else leaves the service: a failure medagent did not expect is a ``500`` with its request id, never a
traceback or an exception's text.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from medagent.errors import ConfigurationError, InfrastructureError, MedagentError
from medagent.logs import REQUEST_ID

log = logging.getLogger("medagent.service.problems")


class Unauthorized(ConfigurationError):
    code = "unauthorized"


class RateLimited(ConfigurationError):
    code = "rate_limited"


class PayloadTooLarge(ConfigurationError):
    code = "payload_too_large"


class UnsupportedMediaType(ConfigurationError):
    code = "unsupported_media_type"


class InvalidRequest(ConfigurationError):
    code = "invalid_request"


class TooManyImages(ConfigurationError):
    code = "too_many_images"


class NothingToResume(ConfigurationError):
    code = "nothing_to_resume"


class ServiceBusy(InfrastructureError):
    """As many turns run as the service allows; retry after ``Retry-After`` seconds."""

    code = "service_busy"


class TurnFailed(Exception):
    """A turn ended with an error event; the request waiting for its answer answers with that error."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(str(data.get("code", "internal")))
        self.data = data


STATUS: Final[dict[str, int]] = {
    "unauthorized": 401,
    "session_not_found": 404, "unknown_artifact": 404, "invalid_name": 404,
    "no_approval_pending": 409, "too_many_sessions": 409, "too_many_images": 409, "nothing_to_resume": 409,
    "payload_too_large": 413, "file_too_large": 413, "image_too_large": 413,
    "unsupported_media_type": 415, "unsupported_format": 415,
    "invalid_request": 422,
    "rate_limited": 429,
    "service_busy": 503,
    # a PACS behind the service (DICOMweb): what it lacks is 404, how it failed 502, its silence 504
    "dicomweb_server_unknown": 404, "dicomweb_not_found": 404, "dicomweb_nothing_pulled": 409,
    "dicomweb_invalid_request": 422, "dicomweb": 502, "dicomweb_unavailable": 502, "dicomweb_server_error": 502,
    "dicomweb_rejected": 502, "dicomweb_response_invalid": 502, "dicomweb_too_large": 502, "dicomweb_timeout": 504,
}
_FAMILY_STATUS: Final[dict[str, int]] = {"tool_failure": 422, "retry": 502, "infrastructure": 503,
                                         "configuration": 500}


def status_for(code: str, family: str) -> int:
    """The HTTP status of a typed error, by its code, else by its family (an image refused: 422; a planner that
    misbehaved: 502; a planner or store that is down: 503)."""
    return STATUS.get(code, _FAMILY_STATUS.get(family, 500))


def error_body(code: str, family: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "family": family, "message": message, **details},
            "request_id": REQUEST_ID.get()}


def problem(error: MedagentError, *, headers: dict[str, str] | None = None) -> JSONResponse:
    status = status_for(error.code, error.family)
    details = {key: value for key, value in error.details.items() if isinstance(value, str | int | float | bool)}
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(details.get("retry_after_s"), int):  # 429 and 503 say when to come back
        headers["Retry-After"] = str(details["retry_after_s"])
    return JSONResponse(error_body(error.code, error.family, error.message, **details), status_code=status,
                        headers=headers)


async def medagent_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MedagentError)
    log.info("refused", extra={"fields": {"code": exc.code}})
    return problem(exc)


async def turn_failed(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TurnFailed)
    code, family = str(exc.data.get("code", "internal")), str(exc.data.get("family", "infrastructure"))
    details = {key: value for key, value in exc.data.items()
               if key not in ("code", "family", "message") and isinstance(value, str | int | float | bool)}
    log.info("turn failed", extra={"fields": {"code": code}})
    return JSONResponse(error_body(code, family, str(exc.data.get("message", "")), **details),
                        status_code=status_for(code, family))


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
            413: "payload_too_large"}.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "the request was refused"
    return JSONResponse(error_body(code, "configuration", message), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """``422`` naming where and what is wrong; the offending values are not repeated (they may be anything)."""
    assert isinstance(exc, RequestValidationError)
    problems = [{"loc": [str(part) for part in item.get("loc", ())][:8], "type": str(item.get("type", ""))[:64],
                 "msg": str(item.get("msg", ""))[:200]} for item in list(exc.errors())[:16]]
    return JSONResponse(error_body("invalid_request", "configuration", "the request does not match the API",
                                   problems=problems), status_code=422)


async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected failure: %s", type(exc).__name__, extra={"fields": {"exception_type": type(exc).__name__}})
    return JSONResponse(error_body("internal", "infrastructure", "the service failed; the request id names it "
                                   "in the service's log"), status_code=500)
