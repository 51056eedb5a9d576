"""Cases of a study as calls to case workers on a Ray cluster (``executor: ray``, ``medagent run --ray ADDRESS``).

The driver (the process running :func:`~medagent.studies.runner.run_study`) keeps everything a local run does: the
run's row and lease, the bound on cases in flight (``concurrency.cases``, across the cluster), the progress events,
and every write to the store. Only the computing of a case moves: to one of N case workers (Ray actors of one CPU,
spread over the nodes, each with its own runner; :mod:`medagent.studies.ray_worker`). Writing from the driver
keeps resume semantics exactly those of a local run: a case is in the store whole or not at all, by one writer.

Raw images never leave the driver. It attaches every image of a case with its own runner's toolbox (the loader,
de-identification key and store of a local run, so the same artifact ids) before sending the case; only the
de-identified artifacts (record and stored pixels) go into Ray's object store, once per artifact while cases in
flight use it, and the worker uses them by id. An image that cannot be attached (missing, too large, corrupt)
fails its case on the driver, recorded as a local run records it, without a call to a worker.

A worker that dies (its process, or its node) fails the calls it had in flight with a Ray error; each such case is
sent once more, to a worker still alive, and recorded with ``attempts = 2``; a second loss records the case as
failed (``worker_lost``; ``--retry-failed`` reruns it). Limits per planner endpoint and per expert hold across the
cluster (:mod:`medagent.studies.cluster_limits`). A store on an SQLite file is refused on a cluster of several
nodes (or through Ray Client): the file cannot be shared between machines.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medagent.errors import ConfigurationError, InfrastructureError, MedagentError
from medagent.store.engine import medagent_version
from medagent.studies.cluster_limits import SlotBoard
from medagent.studies.ray_worker import (
    CaseReply,
    CaseWorker,
    artifact_payload,
    image_paths,
    import_artifacts,
    key_fingerprint,
)
from medagent.tools.artifacts import Artifact

if TYPE_CHECKING:
    from medagent.studies.runner import CaseOutcome, StudyRunner, _WorkItem

logger = logging.getLogger(__name__)
NAMESPACE = "medagent"
# every waiting acquire holds one of the board actor's concurrent calls (Ray's default for an async actor is 1000):
# a release must never queue behind waiters, or no slot is ever freed
BOARD_MAX_CONCURRENCY = 100_000
WORKER_START_TIMEOUT_S = 180.0  # importing medagent and building a runner on a busy node


class RayUnavailable(ConfigurationError):
    """The ray extra is not installed, or no Ray cluster answers at the study's address."""

    code = "ray_unavailable"


class StoreNotShared(ConfigurationError):
    """An SQLite study store with workers on several machines: only processes on its own disk can open the file."""

    code = "store_not_shared"


class ClusterMismatch(ConfigurationError):
    """The workers run another medagent version, or de-identify with another key, than the driver."""

    code = "cluster_mismatch"


class WorkerLost(InfrastructureError):
    """A case's worker died (its process or node) twice; or every worker of the run is gone."""

    code = "worker_lost"


@dataclass(eq=False)
class _Worker:
    handle: Any
    holder: str
    node_id: str = ""
    in_flight: int = 0


@dataclass(eq=False)
class _Shared:
    """Something cases in flight share, made once: a path's attached artifact, or an artifact's object ref."""

    made: asyncio.Future[Any]
    users: int = 0


@dataclass
class _Shipped:
    """A case's images as they travel: path -> image id, and image id -> object ref of its artifact."""

    ids: dict[str, str] = field(default_factory=dict)
    refs: dict[str, Any] = field(default_factory=dict)


class RayCases:
    """The case workers of one run, and the calls that run its cases on them."""

    def __init__(self, runner: StudyRunner, ray: Any, owns_connection: bool) -> None:
        self._runner, self._ray, self._owns = runner, ray, owns_connection
        self._workers: list[_Worker] = []
        self._board: Any = None
        self._turn = itertools.count()
        self._attached: dict[str, _Shared] = {}  # path -> its artifact, attached here (cases in flight using it)
        self._shipped: dict[str, _Shared] = {}  # image id -> object ref of its artifact (cases in flight using it)
        self._lost = self._lost_errors()

    @classmethod
    async def open(cls, runner: StudyRunner) -> RayCases:
        """Connect to the study's cluster, check it may hold the run, start its workers; typed refusals."""
        try:
            import ray
        except ImportError:
            raise RayUnavailable("executor ray needs the ray extra: pip install 'medagent[ray]'") from None
        address = runner.config.executor.address or "auto"
        owns = not ray.is_initialized()
        if owns:
            try:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as exc:  # noqa: BLE001 - ray.init raises many kinds; each means no cluster here
                raise RayUnavailable(f"no Ray cluster answers at {address} ({type(exc).__name__})",
                                     address=address) from None
        cases = cls(runner, ray, owns)
        try:
            await cases._start(address)
        except BaseException:
            await cases.aclose()
            raise
        return cases

    async def _start(self, address: str) -> None:
        from ray.util.client import ray as ray_client

        ray, store = self._ray, self._runner.store
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if store.backend == "sqlite" and (len(nodes) > 1 or ray_client.is_connected()):
            where = f"{len(nodes)} nodes" if len(nodes) > 1 else "a driver outside the cluster (Ray Client)"
            raise StoreNotShared(
                f"the study store is an SQLite file, which only processes on its own machine can open, and this "
                f"Ray cluster has {where}: use a PostgreSQL store (store.url, or --store postgresql://...)",
                nodes=len(nodes))
        count = self._runner.config.executor.workers or int(ray.cluster_resources().get("CPU", 0))
        if count < 1:
            raise RayUnavailable("the Ray cluster has no CPU to run case workers on", address=address)
        # the board lives on the head node, which outlives every worker node; it takes no CPU
        self._board = ray.remote(SlotBoard).options(
            num_cpus=0, resources={"node:__internal_head__": 0.001}, max_concurrency=BOARD_MAX_CONCURRENCY).remote()
        worker_class = ray.remote(CaseWorker)
        url = store.connect_url()
        for _ in range(count):
            holder = f"worker-{uuid.uuid4().hex[:12]}"
            handle = worker_class.options(num_cpus=1, scheduling_strategy="SPREAD").remote(
                self._runner.config, url, self._board, holder)
            self._workers.append(_Worker(handle, holder))
        await self._await_ready()

    async def _await_ready(self) -> None:
        calls = {asyncio.ensure_future(self._ref(worker.handle.ready.remote())): worker for worker in self._workers}
        done, pending = await asyncio.wait(calls, timeout=WORKER_START_TIMEOUT_S)
        for future in pending:  # never scheduled (no free CPU) or still starting: not part of this run
            future.cancel()
            self._drop(calls[future])
        expected = {"version": medagent_version(), "key": key_fingerprint(self._runner.settings)}
        failures: list[str] = []
        for future in done:
            worker = calls[future]
            if future.exception() is not None:  # a worker that died starting: the run goes on without it
                failures.append(type(future.exception()).__name__)
                logger.warning("a case worker could not start (%s); the run goes on without it", failures[-1])
                self._drop(worker)
                continue
            ready = future.result()
            if ready["version"] != expected["version"]:
                raise ClusterMismatch(f"a worker runs medagent {ready['version']}, the driver {expected['version']}",
                                      worker_version=ready["version"])
            if ready["key"] != expected["key"]:
                raise ClusterMismatch("a worker de-identifies with another key than the driver: set the same "
                                      "MEDAGENT_DEID_SECRET on every node")
            worker.node_id = ready["node_id"]
        if not self._workers and failures:
            raise RayUnavailable(f"no case worker could start ({', '.join(sorted(set(failures)))}); see their logs "
                                 "on the cluster")
        if not self._workers:
            raise RayUnavailable("no case worker started on the Ray cluster within "
                                 f"{WORKER_START_TIMEOUT_S:g} s")

    @staticmethod
    async def _ref(ref: Any) -> Any:
        return await ref

    def _lost_errors(self) -> tuple[type[BaseException], ...]:
        from ray import exceptions

        return (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.NodeDiedError,
                exceptions.ObjectLostError)

    def _drop(self, worker: _Worker) -> None:
        """Take a worker out of the run: its calls go elsewhere, the slots it held are freed."""
        if worker in self._workers:
            self._workers.remove(worker)
            self._board.forget.remote(worker.holder)
            self._ray.kill(worker.handle, no_restart=True)  # an unreachable worker must not compute on

    @staticmethod
    def _use(shared: dict[str, _Shared], key: str, function: Callable[..., Any], *arguments: Any) -> asyncio.Future[Any]:
        """The one future for ``key`` while cases in flight use it: ``function(*arguments)`` in a thread, started
        for its first user."""
        entry = shared.get(key)
        if entry is None:
            entry = shared[key] = _Shared(asyncio.ensure_future(asyncio.to_thread(function, *arguments)))
        entry.users += 1
        return entry.made

    @staticmethod
    def _let_go(shared: dict[str, _Shared], key: str) -> None:
        entry = shared.get(key)
        if entry is not None:
            entry.users -= 1
            if entry.users <= 0:  # no case in flight needs it: the object store may free it
                del shared[key]
                if not entry.made.done():
                    entry.made.cancel()

    async def _ship(self, item: _WorkItem, shipped: _Shipped, used: list[tuple[dict[str, _Shared], str]]) -> None:
        """Attach the case's images here, as a local run does (same toolbox, key and modality: same ids), and put
        each artifact (record + de-identified bytes) in the object store; never a raw file. ``used``: the shared
        entries taken, for :meth:`_release`."""
        toolbox, modality = self._runner.toolbox, self._runner._modality
        for path in image_paths(item):
            key = str(path)
            used.append((self._attached, key))
            attaching = self._use(self._attached, key, toolbox.attach, path, modality)
            artifact: Artifact = await asyncio.shield(attaching)  # another case may wait on the same attach
            shipped.ids[key] = artifact.id
            if artifact.id in shipped.refs:
                continue
            used.append((self._shipped, artifact.id))
            putting = self._use(self._shipped, artifact.id, self._put, artifact)
            shipped.refs[artifact.id] = await asyncio.shield(putting)

    def _put(self, artifact: Artifact) -> Any:
        """The object ref of the artifact's record and de-identified bytes: all of an image that leaves the driver."""
        return self._ray.put(artifact_payload(artifact))

    def _release(self, used: list[tuple[dict[str, _Shared], str]]) -> None:
        for shared, key in used:
            self._let_go(shared, key)

    def _least_loaded(self) -> _Worker:
        """The worker with the fewest cases in flight; ties take turns."""
        start = next(self._turn) % len(self._workers)
        return min(self._workers[start:] + self._workers[:start], key=lambda worker: worker.in_flight)

    async def run_case(self, run_id: str, item: _WorkItem) -> CaseOutcome:
        from medagent.studies.runner import CaseOutcome

        used: list[tuple[dict[str, _Shared], str]] = []
        try:
            shipped, started = _Shipped(), time.perf_counter()
            try:
                await self._ship(item, shipped, used)
            except Exception as exc:  # an image that cannot be attached fails its case here, as in a local run
                if not isinstance(exc, MedagentError):
                    logger.exception("case %s failed unexpectedly", item.key)
                return CaseOutcome(self._runner.failed_result(item, exc, time.perf_counter() - started), [], [])
            item = item.model_copy(update={"attached": shipped.ids})
            for attempt in (1, 2):
                if not self._workers:
                    raise WorkerLost("every case worker of this run is gone; resume the run when the cluster is back")
                worker = self._least_loaded()
                worker.in_flight += 1
                ref = worker.handle.run.remote(run_id, item, shipped.refs)
                try:
                    reply: CaseReply = await ref
                except asyncio.CancelledError:
                    self._ray.cancel(ref)
                    raise
                except self._lost as exc:
                    logger.warning("case worker %s lost (%s): its cases run again elsewhere", worker.holder,
                                   type(exc).__name__)
                    self._drop(worker)
                    continue
                finally:
                    worker.in_flight -= 1
                await asyncio.to_thread(import_artifacts, self._runner.toolbox.store, reply.artifacts)
                return CaseOutcome(reply.result, reply.messages, reply.calls, attempt, reply.node_id)
            lost = WorkerLost("the case's worker died twice (a process or node was lost)", case=item.key)
            return CaseOutcome(self._runner.failed_result(item, lost), [], [], 2, None)
        finally:
            self._release(used)

    async def aclose(self) -> None:
        """Stop the workers and the board; disconnect when this run connected."""
        for worker in list(self._workers):
            try:
                await asyncio.wait_for(self._ref(worker.handle.close.remote()), timeout=30)
            except Exception:  # noqa: BLE001 - a worker gone or stuck is killed below either way
                logger.debug("case worker %s did not close cleanly", worker.holder)
            self._ray.kill(worker.handle, no_restart=True)
        self._workers.clear()
        if self._board is not None:
            self._ray.kill(self._board, no_restart=True)
        self._attached.clear()
        self._shipped.clear()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()

