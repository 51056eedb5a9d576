"""The expert runtime: lazy loading, micro-batching, failure isolation, off-loop inference, the model cache."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from medagent.errors import ExpertCrashed, PreconditionFailed, WeightsUnavailable
from medagent.experts import Expert, LoadedModel, ModelCard, Provenance, pick_device
from medagent.runtime.batching import MicroBatcher
from medagent.runtime.cache import ModelCache


class Echo(BaseModel):
    value: str
    batch_size: int
    provenance: Provenance


class FakeExpert(Expert[str, Echo]):
    """Counts loads and batch sizes. "bad" fails its own slot; "boom" makes the whole batch raise."""

    name = "fake"
    card = ModelCard(summary="fake expert for tests")

    def __init__(self, *, predict_s: float = 0.05, fail_load: bool = False, **options: Any) -> None:
        options.setdefault("cache", ModelCache(1 << 20))
        super().__init__(device="cpu", **options)
        self.predict_s, self.fail_load = predict_s, fail_load
        self.loads = 0
        self.batches: list[int] = []  # sizes predict_batch saw, including isolation retries

    @property
    def cache_key(self) -> str:
        return f"fake-{id(self)}"

    def load(self, device: str) -> LoadedModel:
        self.loads += 1
        if self.fail_load:
            raise WeightsUnavailable("fake weights are missing")
        return LoadedModel(model=None, provenance=Provenance(expert=self.name, model_id="fake-1", device=device))

    def predict_batch(self, loaded: LoadedModel, items: list[str]) -> list[Echo | BaseException]:
        self.batches.append(len(items))
        if "boom" in items:
            raise RuntimeError("the whole batch failed")
        time.sleep(self.predict_s)  # simulated compute, in the worker thread
        return [
            PreconditionFailed("bad input") if item == "bad"
            else Echo(value=item, batch_size=len(items), provenance=loaded.provenance)
            for item in items
        ]


@pytest.fixture
def make_expert() -> Iterator[Any]:
    """Builds fake experts (each with its own ModelCache) and shuts their worker threads down afterwards."""
    created: list[FakeExpert] = []

    def make(**options: Any) -> FakeExpert:
        created.append(FakeExpert(**options))
        return created[-1]

    yield make
    for expert in created:
        expert.close()


# -- lazy loading and batching -------------------------------------------------------------


@pytest.mark.asyncio
async def test_loads_lazily_and_once(make_expert: Any) -> None:
    expert = make_expert()
    assert expert.loads == 0 and expert.batch_sizes == []
    first = await expert("a")
    assert expert.loads == 1 and first.value == "a" and first.provenance.device == "cpu"
    assert (await expert("b")).value == "b" and expert.loads == 1


@pytest.mark.asyncio
async def test_concurrent_calls_are_batched(make_expert: Any) -> None:
    expert = make_expert(max_batch_size=8, max_wait_ms=20, predict_s=0.01)
    items = [f"item-{i}" for i in range(20)]
    results = await asyncio.gather(*(expert(item) for item in items))
    assert [r.value for r in results] == items
    assert expert.loads == 1
    assert sum(expert.batch_sizes) == 20 and max(expert.batch_sizes) == 8  # batches formed, capped at 8


@pytest.mark.asyncio
async def test_bad_item_fails_only_its_own_caller(make_expert: Any) -> None:
    expert = make_expert(max_wait_ms=20)
    results = await asyncio.gather(expert("a"), expert("bad"), expert("c"), return_exceptions=True)
    assert isinstance(results[1], PreconditionFailed)
    assert [r.value for r in (results[0], results[2])] == ["a", "c"]  # type: ignore[union-attr]
    assert expert.batches == [3]


@pytest.mark.asyncio
async def test_batch_crash_is_isolated_to_the_culprit(make_expert: Any) -> None:
    expert = make_expert(max_wait_ms=20, predict_s=0.0)
    results = await asyncio.gather(*(expert(item) for item in ["a", "boom", "c", "d"]), return_exceptions=True)
    assert isinstance(results[1], ExpertCrashed) and results[1].family == "infrastructure"
    assert [r.value for r in results if isinstance(r, Echo)] == ["a", "c", "d"]
    assert expert.batches == [4, 1, 1, 1, 1]  # the whole batch, then each item alone
    assert expert.loads == 1


@pytest.mark.asyncio
async def test_load_failure_reaches_every_caller_and_is_not_cached(make_expert: Any) -> None:
    expert = make_expert(fail_load=True, max_wait_ms=20)
    results = await asyncio.gather(expert("a"), expert("b"), expert("c"), return_exceptions=True)
    assert all(isinstance(r, WeightsUnavailable) for r in results)
    assert expert.loads == 1 and expert.batches == []
    with pytest.raises(WeightsUnavailable):
        await expert("d")
    assert expert.loads == 2  # retried, not cached
    expert.fail_load = False
    assert (await expert("e")).value == "e" and expert.loads == 3


@pytest.mark.asyncio
async def test_inference_runs_off_the_event_loop(make_expert: Any, no_blocking: None) -> None:
    expert = make_expert(predict_s=0.5, max_wait_ms=1)
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.05)

    beat = asyncio.create_task(heartbeat())
    result = await expert("slow")
    beat.cancel()
    assert result.value == "slow" and len(ticks) >= 5
    assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) < 0.25


@pytest.mark.asyncio
async def test_run_unbatched(make_expert: Any) -> None:
    expert = make_expert(predict_s=0.0)
    result = await expert.run_unbatched("solo")
    assert isinstance(result, Echo) and (result.value, result.batch_size) == ("solo", 1)
    assert type(await expert("batched")) is type(result) and expert.loads == 1
    with pytest.raises(PreconditionFailed):
        await expert.run_unbatched("bad")


# -- the model cache -------------------------------------------------------------------------


def _load(cache: ModelCache, key: str, size: int = 40) -> str:
    return cache.get_or_load(key, lambda: f"model-{key}", lambda _: size)


def test_cache_evicts_least_recently_used() -> None:
    cache = ModelCache(budget_bytes=100)
    for key in "abc":
        _load(cache, key)
    assert cache.keys() == ["b", "c"] and cache.evictions == 1

    cache = ModelCache(budget_bytes=100)
    for key in "aba":  # the second "a" is a hit, which makes "b" the least recently used
        _load(cache, key)
    assert cache.hits == 1
    _load(cache, "c")
    assert cache.keys() == ["a", "c"] and cache.used_bytes == 80


def test_cache_serves_an_entry_larger_than_the_budget() -> None:
    cache = ModelCache(budget_bytes=100)
    _load(cache, "small")
    assert _load(cache, "huge", size=500) == "model-huge"
    assert cache.keys() == ["huge"]
    _load(cache, "next")  # the next load evicts it
    assert cache.keys() == ["next"]


def test_cache_loads_each_key_once_under_contention() -> None:
    cache = ModelCache(budget_bytes=1 << 20)
    calls = 0
    start = threading.Barrier(8)

    def loader() -> object:
        nonlocal calls
        calls += 1
        time.sleep(0.05)  # long enough for every thread to arrive while loading
        return object()

    def fetch(_: int) -> object:
        start.wait()
        return cache.get_or_load("shared", loader, lambda _: 10)

    with ThreadPoolExecutor(max_workers=8) as pool:
        values = list(pool.map(fetch, range(8)))
    assert calls == 1 and all(value is values[0] for value in values)
    assert (cache.misses, cache.hits) == (1, 7)


# -- the micro-batcher directly -----------------------------------------------------------------


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def square_plus_one(items: list[int]) -> list[int | BaseException]:
    return [i * i + 1 for i in items]


@pytest.mark.asyncio
async def test_single_item_waits_at_most_max_wait(executor: ThreadPoolExecutor) -> None:
    batcher = MicroBatcher(square_plus_one, executor, max_batch_size=8, max_wait_ms=50)
    started = time.perf_counter()
    assert await batcher.submit(3) == 10
    assert time.perf_counter() - started < 0.05 + 0.2 and batcher.batch_sizes == [1]


@pytest.mark.asyncio
async def test_results_are_routed_to_their_callers(executor: ThreadPoolExecutor) -> None:
    batcher = MicroBatcher(square_plus_one, executor, max_batch_size=8, max_wait_ms=20)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    assert results == [i * i + 1 for i in range(20)]
    assert batcher.batch_sizes == [8, 8, 4]


@pytest.mark.parametrize("cancel_while", ["queued", "running"])
@pytest.mark.asyncio
async def test_cancelled_caller_does_not_break_its_batch(executor: ThreadPoolExecutor, cancel_while: str) -> None:
    def slow(items: list[int]) -> list[int | BaseException]:
        time.sleep(0.1)
        return square_plus_one(items)

    batcher = MicroBatcher(slow, executor, max_batch_size=8, max_wait_ms=20)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)  # every item is queued; the batch waits for max_wait
    while cancel_while == "running" and not batcher.batch_sizes:
        await asyncio.sleep(0.005)  # until the batch is in the worker
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], asyncio.CancelledError) and results[2] == 5
    assert batcher.batch_sizes == ([2] if cancel_while == "queued" else [3])


def test_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_device("cpu") == "cpu"
    monkeypatch.setitem(sys.modules, "torch", None)  # torch missing: import fails
    assert pick_device() == "cpu"
    for cuda in (False, True):  # a stand-in torch, so the test does not pay for importing torch
        fake = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda cuda=cuda: cuda))
        monkeypatch.setitem(sys.modules, "torch", fake)
        assert pick_device() == ("cuda" if cuda else "cpu")


@pytest.mark.asyncio
async def test_a_broken_batch_function_fails_callers_instead_of_hanging(executor: ThreadPoolExecutor) -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: [], executor, max_batch_size=4, max_wait_ms=1)
    outcomes = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True), 5)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
