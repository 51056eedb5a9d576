"""The expert runtime: lazy loading, device choice, off-loop inference, micro-batching, provenance."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from medagent.cards import ModelCard
from medagent.errors import ExpertCrashed, ExpertOutOfMemory, MedagentError
from medagent.runtime.batching import MicroBatcher
from medagent.runtime.cache import ModelCache, shared_cache
from medagent.runtime.results import Provenance

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT", bound=BaseModel)


def pick_device(requested: str | None = None) -> str:
    """``cuda`` when a GPU is usable, else ``cpu``; an explicit request wins."""
    if requested:
        return requested
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModel:
    """What ``Expert.load`` returns: the model object plus the facts provenance needs."""

    model: Any
    provenance: Provenance
    size_bytes: int = 0


class WeightsStatus(BaseModel):
    present: bool
    weightless: bool = False
    path: str | None = None
    expected_path: str | None = None
    url: str | None = None
    message: str | None = None


class Expert(ABC, Generic[InputT, OutputT]):
    """Base of every expert. Construction is cheap: nothing is loaded until the first call.

    Subclasses implement :meth:`load` (runs once per cache key, in a worker thread) and
    :meth:`predict_batch` (one result or exception per item). Callers ``await expert(item)``;
    concurrent calls are batched up to ``max_batch_size`` items.
    """

    name: ClassVar[str]
    card: ClassVar[ModelCard]
    batchable: ClassVar[bool] = True
    cpu_only: ClassVar[bool] = False  # classical experts: no accelerator to look for (and no torch import)

    def __init__(
        self,
        *,
        device: str | None = None,
        cache: ModelCache | None = None,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
    ) -> None:
        self._requested_device = device
        self._cache = cache
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self.max_batch_size = max_batch_size if self.batchable else 1
        self.max_wait_ms = max_wait_ms
        self._batcher: MicroBatcher[InputT, OutputT] | None = None

    # -- what subclasses provide ---------------------------------------------------------

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """Identifies the loaded model (expert, weights, device)."""

    @abstractmethod
    def load(self, device: str) -> LoadedModel:
        """Load weights and build the model. Raise WeightsUnavailable when files are missing."""

    @abstractmethod
    def predict_batch(self, loaded: LoadedModel, items: list[InputT]) -> list[OutputT | BaseException]:
        """Run the model on a batch. Return an exception in an item's slot to fail that item alone."""

    def weights_status(self) -> WeightsStatus:
        return WeightsStatus(present=True, weightless=True)

    def ready(self) -> bool:
        """Whether a call can succeed as far as weights go (checked without loading anything)."""
        return self.weights_status().present

    # -- runtime ---------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return "cpu" if self.cpu_only else pick_device(self._requested_device)

    @property
    def cache(self) -> ModelCache:
        return self._cache or shared_cache()

    def _ensure_runtime(self) -> MicroBatcher[InputT, OutputT]:
        with self._executor_lock:
            if self._executor is None:
                # One worker per expert: batches of one model run in order, never concurrently.
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"expert-{self.name}")
                self._batcher = MicroBatcher(
                    self._process, self._executor, max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms
                )
            assert self._batcher is not None
            return self._batcher

    def loaded(self) -> LoadedModel:
        """Load (or fetch from the cache) in the calling thread."""
        device = self.device
        return self.cache.get_or_load(self.cache_key, lambda: self.load(device), lambda m: m.size_bytes)

    def _process(self, items: list[InputT]) -> list[OutputT | BaseException]:
        try:
            loaded = self.loaded()
        except MedagentError as exc:
            return [exc for _ in items]  # the same load failure for every caller, no retries
        except MemoryError:
            return [ExpertOutOfMemory(f"{self.name}: out of memory while loading") for _ in items]
        try:
            results = self.predict_batch(loaded, items)
        except MedagentError:
            raise
        except Exception as exc:
            raise self._typed(exc) from exc
        # an exception returned in an item's slot reaches its caller: typed like a raised one
        return [self._typed(result) if isinstance(result, Exception) else result for result in results]

    def _typed(self, exc: Exception) -> MedagentError:
        if isinstance(exc, MedagentError):
            return exc
        if isinstance(exc, MemoryError):
            error: MedagentError = ExpertOutOfMemory(f"{self.name}: out of memory during inference")
        elif type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            error = ExpertOutOfMemory(f"{self.name}: accelerator out of memory")
        else:
            error = ExpertCrashed(f"{self.name}: inference failed ({type(exc).__name__})")
        error.__cause__ = exc
        return error

    async def __call__(self, item: InputT) -> OutputT:
        return await self._ensure_runtime().submit(item)

    async def run_unbatched(self, item: InputT) -> OutputT:
        """One item per model call (for comparisons and debugging); still off the event loop."""
        self._ensure_runtime()
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        result = (await loop.run_in_executor(self._executor, self._process, [item]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
                self._batcher = None

    @property
    def batch_sizes(self) -> list[int]:
        return list(self._batcher.batch_sizes) if self._batcher else []
