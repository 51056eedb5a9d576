"""One planner role on several OpenAI-compatible servers, against real HTTP servers on 127.0.0.1: a study that
loses a replica mid-run, routing by load, cool-down and recovery, model checks, and what is never retried."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Self

import pytest
from pydantic import ValidationError

from medagent.agents.factory import PlannerFactory
from medagent.agents.planner import MAX_REPLICAS, PlannerConfig
from medagent.agents.replicas import ReplicatedPlanner
from medagent.config import Settings
from medagent.errors import PlannerRejected, PlannerUnavailable, ReplicaModelMismatch
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import StudyRunner
from tests.fake_openai_server import Behaviour, FakeOpenAIServer, _Server, status, text
from tests.study_files import variants, write_manifest, write_study

USER = [{"role": "user", "content": "hello"}]
SECRET = "pw-s3cret"


class Replica(FakeOpenAIServer):
    """The fake server, killable as a crashed process is (no new connection, every open one cut); ``port``:
    a server that comes back where a killed one was."""

    def __init__(self, behaviours: list[Behaviour], *, model: str = "fake-model", capacity: int | None = None,
                 port: int = 0) -> None:
        super().__init__(behaviours, model=model, capacity=capacity)
        if port:
            self._server.server_close()
            self._server = _Server(("127.0.0.1", port), self._handler())
            self._server.daemon_threads = True
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.killed_at: float | None = None
        self._connections: list[socket.socket] = []
        serve = self._server.process_request

        def tracked(request: Any, address: Any) -> None:
            if self.killed_at is not None:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
                return
            self._connections.append(request)
            serve(request, address)

        self._server.process_request = tracked  # type: ignore[method-assign,assignment]
        self._server.handle_error = lambda *_: None  # type: ignore[method-assign]  # writes to cut connections

    def __enter__(self) -> Self:
        super().__enter__()
        return self

    def secret_url(self) -> str:
        return self.url.replace("http://", f"http://medagent:{SECRET}@")

    def kill(self) -> int:
        """Die now; returns how many chat requests it was holding."""
        held, self.killed_at = self.in_flight, time.monotonic()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
        return held

    def __exit__(self, *_: object) -> None:
        if self.killed_at is None:
            super().__exit__()


def _planner(urls: list[str], board_limit: int | None = None, **options: Any) -> tuple[PlannerFactory, Any]:
    factory = PlannerFactory()
    factory.replicas.limit = board_limit
    config = PlannerConfig.model_validate({"endpoints": urls, "connect_timeout_s": 1.0, "read_timeout_s": 5.0,
                                           **options})
    return factory, config


def _study(tmp_path: Path, nih_images: list[Path], urls: list[str], cases: int, per_endpoint: int) -> Path:
    images = variants(nih_images[0], tmp_path, cases)  # each case its own image, so its own request
    write_manifest(tmp_path, [(f"c{index:02d}", image, index % 2, "MF"[index % 2]) for index, image in enumerate(images)])
    study = write_study(tmp_path, "  type: agent_loop\n  question: Describe the image.", concurrency=8)
    text_ = study.read_text().replace("concurrency: {cases: 8}",
                                      f"concurrency: {{cases: 8, per_planner_endpoint: {per_endpoint}}}")
    endpoints = json.dumps(urls)
    study.write_text(text_.replace("graph:", f"planners:\n  planner: {{endpoints: {endpoints}, model: fake-model, "
                                             "tool_calling: native, max_retries: 1}\ngraph:", 1))
    return study


def _messages(request: dict[str, Any]) -> str:
    return json.dumps(request["body"]["messages"], sort_keys=True)


@pytest.mark.asyncio
async def test_a_study_completes_when_a_replica_dies_mid_run_and_its_requests_move(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    delay = 0.3
    with Replica([Behaviour("slow", text="No tool was needed.", delay_s=delay)], capacity=3) as doomed, \
            Replica([Behaviour("slow", text="No tool was needed.", delay_s=delay)], capacity=3) as survivor:
        config = load_study(_study(tmp_path, nih_images, [doomed.secret_url(), survivor.secret_url()], 24, 3))
        at_kill: dict[str, int] = {}

        async def kill_when_both_are_busy() -> None:
            # more than 3 requests in flight at once: the limit of 3 holds per replica, not per role
            while doomed.in_flight + survivor.in_flight < 5 or len(doomed.chat_requests()) < 6:
                await asyncio.sleep(0.005)
            at_kill.update(doomed=len(doomed.chat_requests()), survivor=len(survivor.chat_requests()))
            at_kill["held"] = doomed.kill()

        with StudyStore.open(None, settings.home) as store:
            runner = StudyRunner(config, store, settings)
            killer = asyncio.create_task(kill_when_both_are_busy())
            events = [event async for event in runner.run("replicas")]
            runner.toolbox.close()
            await killer
            assert events[-1].done == 24 and {case.status for case in store.cases("replicas")} == {"succeeded"}
            stored = json.dumps(store.get_run("replicas").config)  # type: ignore[union-attr]
            assert SECRET not in stored and "//***@127.0.0.1" in stored
            board = runner.planners.replicas
    # spread by load before the kill: two equal servers, each with about half
    assert abs(at_kill["doomed"] - at_kill["survivor"]) <= 3, at_kill
    assert at_kill["held"] >= 1 and doomed.peak_in_flight <= 3 and survivor.peak_in_flight == 3
    # what the dead replica was holding (sent more recently than an answer takes) was sent again to the survivor
    assert doomed.killed_at is not None
    held = {_messages(r) for r in doomed.chat_requests() if r["time"] > doomed.killed_at - delay + 0.05}
    resent = {_messages(r) for r in survivor.chat_requests() if r["time"] > doomed.killed_at}
    assert held and held <= resent
    # one outage counts once however many requests it failed; each routed request reached its server
    dead, alive = board.replica(doomed.secret_url()), board.replica(survivor.secret_url())
    assert dead.failed >= at_kill["held"] and dead.streak == 1 and dead.down_until > time.monotonic()
    assert alive.sent == len(survivor.chat_requests()) and alive.failed == 0 and alive.in_flight == 0


@pytest.mark.asyncio
async def test_requests_go_to_the_least_loaded_replica_not_in_turn() -> None:
    with Replica([Behaviour("slow", text="fast", delay_s=0.02)]) as fast, \
            Replica([Behaviour("slow", text="slow", delay_s=0.4)]) as slow:
        factory, config = _planner([fast.url, slow.url])
        async with factory:
            planner = await factory.build(config)

            async def worker() -> list[str]:
                return [(await planner.complete(USER)).content.strip() for _ in range(5)]

            answers = [a for answers in await asyncio.gather(*(worker() for _ in range(4))) for a in answers]
    # in turn would be 10 and 10; by load, the slow one holds few while the fast one answers many
    assert len(answers) == 20 and answers.count("fast") >= 3 * answers.count("slow") >= 3


@pytest.mark.asyncio
async def test_the_limit_holds_per_replica() -> None:
    with Replica([Behaviour("slow", text="ok", delay_s=0.2)]) as one, \
            Replica([Behaviour("slow", text="ok", delay_s=0.2)]) as two:
        factory, config = _planner([one.url, two.url], board_limit=2)
        async with factory:
            planner = await factory.build(config)
            await asyncio.gather(*(planner.complete(USER) for _ in range(10)))
    assert one.peak_in_flight == two.peak_in_flight == 2
    assert len(one.chat_requests()) + len(two.chat_requests()) == 10


@pytest.mark.parametrize(("cooldown_s", "used_again"), [(0.5, True), (30.0, False)])
@pytest.mark.asyncio
async def test_a_replica_that_comes_back_is_used_again_after_its_cool_down(cooldown_s: float, used_again: bool) -> None:
    with Replica([text("first")]) as first, Replica([text("second")]) as second:
        factory, config = _planner([first.url, second.url], replica_cooldown_s=cooldown_s)
        async with factory:
            planner = await factory.build(config)
            replica = factory.replicas.replica(first.url)
            assert (await planner.complete(USER)).content.strip() == "first"  # in turn: replica 0 first
            port = int(first.url.rsplit(":", 1)[1].split("/")[0])
            first.kill()
            # in turn, one of these reaches the dead replica 0 and moves to replica 1
            assert [(await planner.complete(USER)).content.strip() for _ in range(2)] == ["second"] * 2
            assert replica.streak == 1 and replica.failed == 1
            with Replica([text("back")], port=port) as back:  # up again, but cooling down: not used yet
                during = [(await planner.complete(USER)).content.strip() for _ in range(4)]
                await asyncio.sleep(0.55)
                after = [(await planner.complete(USER)).content.strip() for _ in range(4)]
            assert during == ["second"] * 4
            assert ("back" in after) is used_again and len(back.chat_requests()) == after.count("back")
            assert replica.streak == (0 if used_again else 1)


@pytest.mark.asyncio
async def test_a_replica_failing_again_stays_out_twice_as_long() -> None:
    with Replica([status(503), status(503), text("well")]) as flaky, Replica([text("steady")]) as steady:
        factory, config = _planner([flaky.url, steady.url], replica_cooldown_s=0.3, max_retries=1)
        async with factory:
            planner = await factory.build(config)
            replica = factory.replicas.replica(flaky.url)
            assert (await planner.complete(USER)).content.strip() == "steady"  # 503 on replica 0, moved
            assert replica.down_until - replica.failed_at == pytest.approx(0.3)
            await asyncio.sleep(0.35)
            assert (await planner.complete(USER)).content.strip() == "steady"  # the probe got 503: moved again
            assert replica.streak == 2 and replica.down_until - replica.failed_at == pytest.approx(0.6)
            await asyncio.sleep(0.35)
            assert {(await planner.complete(USER)).content.strip() for _ in range(2)} == {"steady"}
            await asyncio.sleep(0.3)
            answers = {(await planner.complete(USER)).content.strip() for _ in range(3)}
            assert "well" in answers and replica.streak == 0


@pytest.mark.asyncio
async def test_a_refusal_is_not_sent_to_another_replica_and_a_busy_one_is_not_cooled() -> None:
    with Replica([status(400)]) as refusing, Replica([text("fine")]) as other:
        factory, config = _planner([refusing.url, other.url])
        async with factory:
            planner = await factory.build(config)
            with pytest.raises(PlannerRejected):
                await planner.complete(USER)
            assert len(other.chat_requests()) == 0 and factory.replicas.replica(refusing.url).streak == 0
    with Replica([status(429)]) as busy, Replica([text("fine")]) as other:
        factory, config = _planner([busy.url, other.url])
        async with factory:
            planner = await factory.build(config)
            assert (await planner.complete(USER)).content.strip() == "fine"
            assert factory.replicas.replica(busy.url).down_until == 0.0


@pytest.mark.asyncio
async def test_when_every_replica_fails_the_error_is_typed_and_names_them_by_index() -> None:
    with Replica([text("never")]) as one, Replica([text("never")]) as two:
        urls = [one.secret_url(), two.secret_url()]
        one.kill()
        two.kill()
        factory, config = _planner(urls, max_retries=3)
        async with factory:
            planner = await factory.build(config)
            with pytest.raises(PlannerUnavailable) as caught:
                await planner.complete(USER)
            assert caught.value.family == "infrastructure"
            assert "replica 0" in caught.value.message and "replica 1" in caught.value.message
            assert SECRET not in caught.value.message and SECRET not in json.dumps(caught.value.to_dict())
            with pytest.raises(PlannerUnavailable, match="cooling down"):  # both out: no wait, no new attempt
                await planner.complete(USER)


@pytest.mark.asyncio
async def test_replicas_serving_different_models_are_a_configuration_error(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    with Replica([text("a")], model="model-a") as one, Replica([text("b")], model="model-b") as two:
        urls = [one.secret_url(), two.secret_url()]
        planner = ReplicatedPlanner(PlannerConfig(endpoints=urls), PlannerFactory().replicas)
        with pytest.raises(ReplicaModelMismatch) as caught:
            await planner.served_model()
        assert caught.value.family == "configuration" and caught.value.details["replicas"] == [0, 1]
        assert "replicas 0 and 1" in caught.value.message and SECRET not in caught.value.message
        assert "127.0.0.1" not in caught.value.message
        assert [len([r for r in s.requests if r["path"].endswith("/models")]) for s in (one, two)] == [1, 1]
        await planner.aclose()
        # lazily at first use too: the first request reads replica 0, the second finds replica 1 differs
        lazy = ReplicatedPlanner(PlannerConfig(endpoints=urls), PlannerFactory().replicas)
        assert (await lazy.complete(USER)).content.strip() == "a"
        with pytest.raises(ReplicaModelMismatch):
            await lazy.complete(USER)
        await lazy.aclose()
        # a study checks before any case runs
        study = _study(tmp_path, nih_images, urls, 2, 2)
        study.write_text(study.read_text().replace("model: fake-model, ", ""))
        with StudyStore.open(None, settings.home) as store:
            runner = StudyRunner(load_study(study), store, settings)
            with pytest.raises(ReplicaModelMismatch, match="role planner"):
                [event async for event in runner.run("mismatch")]
            runner.toolbox.close()
            assert store.get_run("mismatch") is None


def test_endpoints_are_bounded_checked_by_index_and_exclusive_with_endpoint() -> None:
    ok = PlannerConfig(endpoints=["http://127.0.0.1:1/v1", "https://a.example/v1"])
    assert ok.endpoint_urls == ["http://127.0.0.1:1/v1", "https://a.example/v1"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"endpoints": [f"http://127.0.0.1:{port}/v1" for port in range(1, MAX_REPLICAS + 2)]}, "at most 64"),
        ({"endpoints": ["http://127.0.0.1:1/v1"]}, "at least 2"),
        ({"endpoints": ["http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1/"]}, r"endpoints\[1\] repeats"),
        ({"endpoints": ["http://127.0.0.1:1/v1", f"ftp://u:{SECRET}@host/v1"]}, r"endpoints\[1\] is not an http"),
        ({"endpoints": ["http://a/v1", "http://b/v1"], "endpoint": "http://c/v1"}, "either endpoint"),
        ({"endpoints": ["http://a/v1", "http://b/v1"], "replica_cooldown_s": 0}, "greater than 0"),
    ]
    for values, message in cases:
        with pytest.raises(ValidationError, match=message):
            PlannerConfig.model_validate(values)
