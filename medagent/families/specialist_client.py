"""The wire side of a specialist model: one bounded chat call to its OpenAI-compatible endpoint.

It rides on the planner's client (:class:`medagent.agents.openai_backend.OpenAICompatiblePlanner`): the same
official ``openai`` client, retries, streaming reads capped at max(1024, 16 x max_tokens) characters, an overall
deadline per call and the model checked against ``GET /v1/models``. What it adds: the card's timeout and a slot
limit shared by the card's tools, the key read from the environment at each call, and errors worded for the
specialist (a planner reading "planner server did not answer" would take it for itself).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any
from urllib.parse import urlsplit

from medagent.agents.openai_backend import OpenAICompatiblePlanner
from medagent.agents.planner import Message, PlannerConfig, PlannerTurn
from medagent.agents.prompts import safe_token
from medagent.errors import (
    MedagentError,
    ModelNotServed,
    PlannerAnswerTooLarge,
    PlannerProtocolError,
    PlannerRateLimited,
    PlannerRejected,
    PlannerServerError,
    PlannerTimeout,
    PlannerUnavailable,
    SecretInvalid,
    SpecialistFailed,
    ToolTimeout,
)
from medagent.families.card import SpecialistCard

_SERVED_SHOWN = 5  # model ids a server lists, quoted back in an error (a hostile server may list thousands)
_REASONS: list[tuple[type[MedagentError], str]] = [
    (PlannerUnavailable, "cannot be reached"),
    (PlannerRateLimited, "kept answering 429 Too Many Requests"),
    (PlannerServerError, "answered with a server error"),
    (PlannerProtocolError, "sent a malformed or cut-off answer"),
]


def endpoint_host(card: SpecialistCard) -> str:
    """Where the model runs, for provenance: host and port only (no credentials, path or query)."""
    parts = urlsplit(str(card.endpoint))
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


class SpecialistClient:
    """Chat calls to one card's endpoint, at most ``card.max_concurrency`` in flight across all its tools."""

    def __init__(self, card: SpecialistCard) -> None:
        self.card = card
        self.host = endpoint_host(card)
        # asyncio primitives belong to one event loop: one slot semaphore per loop that calls
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._slots:
            self._slots[loop] = asyncio.Semaphore(self.card.max_concurrency)
        return self._slots[loop]

    def _api_key(self) -> str | None:
        name = self.card.api_key_env
        if name is None:
            return None
        key = os.environ.get(name, "")
        if not key.strip():
            raise SecretInvalid(f"specialist {self.card.name}: the environment variable {name} (api_key_env) is "
                                "not set", variable=name)
        return key

    async def complete(self, messages: list[Message]) -> PlannerTurn:
        """One streamed chat completion, under the card's slot limit and deadline; typed errors only."""
        async with self._semaphore():
            key = self._api_key()
            timeout = self.card.timeout_s
            # a client per call: an httpx pool belongs to the event loop that opened it, and tools are called
            # from more than one loop; plain-http clients cost nothing to build (no CA bundle)
            config = PlannerConfig(backend="openai", endpoint=str(self.card.endpoint), model=self.card.model,
                                   api_key=key, max_tokens=self.card.max_tokens, temperature=0.0, seed=0,
                                   connect_timeout_s=min(3.0, timeout), read_timeout_s=timeout, deadline_s=timeout,
                                   max_answer_chars=1024)
            client = OpenAICompatiblePlanner(config)
            try:
                return await client.complete(messages)
            except MedagentError as exc:
                raise self._translated(exc, key) from None  # the chain would carry the server's own words
            finally:
                await client.aclose()

    def _translated(self, exc: MedagentError, key: str | None) -> MedagentError:
        where = f"specialist {self.card.name} at {self.host}"
        if isinstance(exc, PlannerTimeout):
            return ToolTimeout(f"{where} did not answer within {self.card.timeout_s:g} s", tool=self.card.name,
                               timeout_s=self.card.timeout_s)
        if isinstance(exc, ModelNotServed):
            served = [safe_token(item) for item in exc.details.get("served", [])[:_SERVED_SHOWN]]
            return ModelNotServed(f"{where} does not serve model {self.card.model!r}; it serves: "
                                  f"{', '.join(served) or 'nothing'}", served=served)
        if isinstance(exc, PlannerAnswerTooLarge):
            return SpecialistFailed(f"{where}: the answer passed {exc.details.get('limit')} characters "
                                    f"(max_tokens {self.card.max_tokens}); reading stopped", cause=exc.code,
                                    limit=exc.details.get("limit"))
        if isinstance(exc, PlannerRejected):
            # the server's own words help (context too long, image refused); a key it echoes never passes
            words = exc.message.partition("): ")[2]
            if key:
                words = words.replace(key, "***")
            status: Any = exc.details.get("status")
            return SpecialistFailed(f"{where} rejected the request ({status}): {words}"[:400], cause=exc.code,
                                    status=status)
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "failed")
        return SpecialistFailed(f"{where} {reason}", cause=exc.code)
