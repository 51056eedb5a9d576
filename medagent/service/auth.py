"""``Authorization: Bearer <key>`` on every route but health and readiness, then the key's rate limit.

A missing, malformed, unknown or revoked key is the same ``401`` (which of them is not said). Failed logins
are limited per client address, so guessing costs time and scrypt work stays bounded; a valid key's
requests are limited per key (its own rate and burst, or the service's), answered ``429`` with
``Retry-After`` when its bucket is empty.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Final

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medagent.service.keys import Principal
from medagent.service.problems import RateLimited, Unauthorized
from medagent.service.ratelimit import retry_after_header

if TYPE_CHECKING:
    from medagent.service.app import Service

MAX_KEY_CHARS: Final = 200
bearer = HTTPBearer(auto_error=False, scheme_name="apiKey",
                    description="an API key from `medagent keys create`, as `Authorization: Bearer mak_...`")


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def principal(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    service = service_of(request)
    found = None
    if credentials is not None and len(credentials.credentials) <= MAX_KEY_CHARS:
        found = await asyncio.to_thread(service.keys.verify, credentials.credentials)
    if found is None:
        client = request.client.host if request.client else "unknown"
        wait = service.failed_logins.acquire(client)
        if wait:
            raise RateLimited("too many failed logins from this address", retry_after_s=int(retry_after_header(wait)))
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")
    request.state.key_id = found.key_id
    wait = service.limiter.acquire(found.key_id, rate_per_s=found.rate_per_s, burst=found.burst)
    if wait:
        raise RateLimited("this key's rate limit is reached", retry_after_s=int(retry_after_header(wait)))
    return found


Caller = Annotated[Principal, Depends(principal)]
