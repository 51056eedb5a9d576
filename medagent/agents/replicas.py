"""One planner role on several OpenAI-compatible servers of the same model (``PlannerConfig.endpoints``): vLLM
replicas, or the replicas of one Ray Serve LLM app.

Each request goes to the least-loaded replica in rotation: requests in flight, counted across every planner of
one factory that names the server (ties take turns), under a study's ``per_planner_endpoint`` limit, which holds
per replica. A replica that fails a request (connection error, timeout, 5xx, a stream that breaks off) leaves
rotation for ``replica_cooldown_s``, doubled with each failure in a row (at most 32x); then one request at a time
probes it until one succeeds. The failed request moves to a replica it has not tried: ``max_retries`` moves at
most (a replica's own client does not retry: the budget is better spent elsewhere), all within the call's
``deadline_s``. A 429 moves on without a cool-down (the replica is alive, only busy). A 4xx refusal, an
oversized answer or a configuration error is the request's own and is raised as is; so is a failure after
tokens were streamed (sending the request again would show them twice). Each replica's model is read once
(GET /v1/models) at first use: replicas serving different models are a typed configuration error that names
them by index, never by URL (a URL may carry credentials).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from medagent.agents.planner import Message, PlannerConfig, PlannerTurn, TokenCallback, ToolChoice
from medagent.errors import (
    ModelNotServed,
    PlannerAnswerTooLarge,
    PlannerProtocolError,
    PlannerRateLimited,
    PlannerServerError,
    PlannerTimeout,
    PlannerUnavailable,
    ReplicaModelMismatch,
)

if TYPE_CHECKING:
    from medagent.agents.openai_backend import OpenAICompatiblePlanner

log = logging.getLogger("medagent.planner.replicas")
MAX_COOLDOWN_FACTOR = 32
# what says a replica is unwell (it leaves rotation), and what only says it is busy (the request moves on)
_UNWELL = (PlannerUnavailable, PlannerTimeout, PlannerServerError, PlannerProtocolError)
_MOVE_ON = (*_UNWELL, PlannerRateLimited)
Outcome = Literal["ok", "failed", "busy", "none"]


@dataclass(eq=False)
class Replica:
    """One server as every planner of a factory sees it."""

    in_flight: int = 0
    sent: int = 0  # requests routed here
    failed: int = 0  # requests (or model reads) that failed here
    streak: int = 0  # failures in a row; a replica with a streak is in rotation again only through a probe
    down_until: float = 0.0  # time.monotonic() when its cool-down ends
    failed_at: float = float("-inf")  # when it last failed: only later requests can end or extend an outage

    def open_at(self, now: float) -> bool:
        """In rotation: healthy, or cooled down with no probe out yet."""
        return self.down_until <= now and not (self.streak and self.in_flight)


class ReplicaBoard:
    """Load and health of every server the planners of one factory name (by URL), and their request limit."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit  # requests in flight per replica; None: unbounded
        self._replicas: dict[str, Replica] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._turn = 0

    def replica(self, url: str) -> Replica:
        return self._replicas.setdefault(url.rstrip("/"), Replica())

    async def take(self, replicas: list[Replica], skip: Container[int]) -> tuple[int, float] | None:
        """(index, start time) of the least-loaded replica in rotation outside ``skip``, its slot taken; waits
        while those are at the limit or probed; None when every one outside ``skip`` is cooling down."""
        while True:
            now = time.monotonic()
            left = [index for index in range(len(replicas)) if index not in skip]
            if all(replicas[index].down_until > now for index in left):
                return None
            ready = [index for index in left if replicas[index].open_at(now)
                     and (self.limit is None or replicas[index].in_flight < self.limit)]
            if ready:
                least = min(replicas[index].in_flight for index in ready)
                ties = [index for index in ready if replicas[index].in_flight == least]
                index = ties[self._turn % len(ties)]
                self._turn += 1
                replicas[index].in_flight += 1
                replicas[index].sent += 1
                return index, now
            # a slot frees, a probe ends, or a cool-down runs out
            wake = min((replicas[index].down_until for index in left if replicas[index].down_until > now),
                       default=None)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                async with asyncio.timeout(None if wake is None else wake - now):
                    await waiter
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)

    def release(self, replica: Replica, started: float, outcome: Outcome, cooldown_s: float) -> float:
        """Free the slot of a request started at ``started``; returns the cool-down it began (0: none)."""
        replica.in_flight -= 1
        pause = 0.0
        if outcome == "ok" and started >= replica.failed_at:  # an answer to an older request proves nothing
            replica.streak, replica.down_until = 0, 0.0
        elif outcome == "failed":
            pause = self.fail(replica, started, cooldown_s)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        return pause

    def fail(self, replica: Replica, started: float, cooldown_s: float) -> float:
        replica.failed += 1
        now = time.monotonic()
        if started < replica.failed_at or replica.down_until > now:
            return 0.0  # requests sent before an outage was seen fail with it: one failure, not many
        replica.streak += 1
        pause = cooldown_s * min(2 ** (replica.streak - 1), MAX_COOLDOWN_FACTOR)
        replica.failed_at, replica.down_until = now, now + pause
        return pause


class ReplicatedPlanner:
    """A planner over ``config.endpoints``: one client per replica, routed on a :class:`ReplicaBoard`."""

    def __init__(self, config: PlannerConfig, board: ReplicaBoard) -> None:
        self.config = config
        self.urls = config.endpoint_urls
        self.replicas = [board.replica(url) for url in self.urls]
        self.moved = 0  # requests that failed on one replica and went on to another
        self._board = board
        self._clients: dict[int, OpenAICompatiblePlanner] = {}
        self._models: dict[int, str] = {}
        self._reading = [asyncio.Lock() for _ in self.urls]

    def _client(self, index: int) -> OpenAICompatiblePlanner:
        if index not in self._clients:  # built at first use: 64 https clients cost seconds of CA loading
            from medagent.agents.openai_backend import OpenAICompatiblePlanner

            single = self.config.model_copy(update={"max_retries": 0})
            self._clients[index] = OpenAICompatiblePlanner(single, endpoint=self.urls[index])
        return self._clients[index]

    async def _model(self, index: int) -> str:
        """The model replica ``index`` serves (read once), checked against the other replicas read so far."""
        if index not in self._models:
            async with self._reading[index]:  # once however many requests reach a new replica together
                if index not in self._models:
                    try:
                        self._models[index] = await self._client(index).served_model()
                    except ModelNotServed as exc:
                        raise ModelNotServed(f"planner replica {index}: {exc.message}", **exc.details,
                                             replica=index) from exc
        served = self._models[index]
        for other, model in sorted(self._models.items()):
            if model != served:
                (first, one), (second, two) = sorted([(other, model), (index, served)])
                raise ReplicaModelMismatch(
                    f"planner replicas {first} and {second} serve different models ({one!r}, {two!r}); every "
                    "endpoint of a role must serve the same one", replicas=[first, second], models=[one, two])
        return served

    async def served_model(self) -> str:
        """The model the replicas serve, read from each in rotation (once); one that cannot be reached leaves
        rotation and is read at its first use."""
        if len(self._models) == len(self.urls):
            return self._models[0]
        now = time.monotonic()
        indices = [index for index, replica in enumerate(self.replicas) if replica.down_until <= now]
        results = await asyncio.gather(*(self._model(index) for index in indices), return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, BaseException) and not isinstance(outcome, _MOVE_ON):
                raise outcome
        for index, outcome in zip(indices, results, strict=True):
            if isinstance(outcome, _UNWELL):
                self._board.fail(self.replicas[index], now, self.config.replica_cooldown_s)
        served = [outcome for outcome in results if isinstance(outcome, str)]
        if not served:
            raise PlannerUnavailable(f"none of the {len(self.urls)} planner replicas answered (those not tried "
                                     "are cooling down after failures)", replicas=len(self.urls))
        return served[0]

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       tool_choice: ToolChoice = "auto", response_schema: dict[str, Any] | None = None,
                       on_token: TokenCallback | None = None) -> PlannerTurn:
        deadline = asyncio.timeout(self.config.deadline_s)  # over every replica tried
        try:
            async with deadline:
                return await self._route(messages, tools, tool_choice, response_schema, on_token)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise PlannerTimeout(f"planner call did not finish within its overall deadline of "
                                 f"{self.config.deadline_s:g} s", deadline_s=self.config.deadline_s) from None

    async def _route(self, messages: list[Message], tools: list[dict[str, Any]] | None, tool_choice: ToolChoice,
                     response_schema: dict[str, Any] | None, on_token: TokenCallback | None) -> PlannerTurn:
        failed: dict[int, str] = {}  # replica -> the error code it failed this request with
        streamed = False

        async def relay(text: str) -> None:
            nonlocal streamed
            streamed = True
            shown = on_token(text) if on_token is not None else None
            if inspect.isawaitable(shown):
                await shown

        while True:
            taken = await self._board.take(self.replicas, failed)
            if taken is None:
                raise self._exhausted(failed, "every replica failed it" if len(failed) == len(self.urls) else
                                      f"{'the others are' if failed else 'every one is'} cooling down after failures")
            index, started = taken
            replica = self.replicas[index]
            try:
                await self._model(index)
                turn = await self._client(index).complete(messages, tools=tools, tool_choice=tool_choice,
                                                          response_schema=response_schema,
                                                          on_token=relay if on_token is not None else None)
            except PlannerAnswerTooLarge:
                self._board.release(replica, started, "none", 0.0)
                raise
            except _MOVE_ON as exc:
                unwell = not isinstance(exc, PlannerRateLimited)
                pause = self._board.release(replica, started, "failed" if unwell else "busy",
                                            self.config.replica_cooldown_s)
                failed[index] = exc.code
                if pause:
                    log.warning("planner replica %d left rotation for %.1f s (%s)", index, pause, exc.code)
                if streamed or len(failed) > self.config.max_retries:
                    if streamed or len(failed) == 1:
                        raise  # as one server would have answered
                    raise self._exhausted(failed, f"max_retries {self.config.max_retries} allows no more") from exc
                self.moved += 1
            except BaseException:
                self._board.release(replica, started, "none", 0.0)
                raise
            else:
                self._board.release(replica, started, "ok", 0.0)
                return turn

    def _exhausted(self, failed: dict[int, str], why: str) -> PlannerUnavailable:
        tried = ", ".join(f"replica {index}: {code}" for index, code in failed.items()) or "none could be tried"
        return PlannerUnavailable(f"no planner replica answered this request ({tried}); {why}",
                                  replicas=len(self.urls),
                                  failed=[{"replica": index, "code": code} for index, code in failed.items()])

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
