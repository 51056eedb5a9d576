"""Run a study: cases x repeats x arms under bounded concurrency, each terminal outcome written to SQL
as it finishes, so a killed run resumes without recomputing finished cases."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from medagent.agents.planner import Planner, Role
from medagent.agents.pool import PlannerPool
from medagent.assembly import Assembly
from medagent.config import Settings
from medagent.errors import MedagentError, PreconditionFailed
from medagent.names import check_name
from medagent.questions.layouts.base import SkippedRow
from medagent.runtime.untrained import expert_weights
from medagent.store import CaseError, CaseResult, MetricValue, StudyStore
from medagent.store.leases import DEFAULT_LEASE_TTL_S, new_owner
from medagent.studies.case_images import case_image_id, stored_image
from medagent.studies.case_writes import CaseWrites
from medagent.studies.components import TargetPolicy
from medagent.studies.config import ExpertRef, PlannerSpec, StudyConfig
from medagent.studies.datasets import Case, load_question_set, question_case
from medagent.studies.dialogue_graph import DialogueGraph
from medagent.studies.dialogue_runner import DialogueCaseRunner, resolve_label_set, role_specs
from medagent.studies.loading import config_hash
from medagent.studies.pipeline import AgentLoopGraph, PipelineGraph
from medagent.studies.pipeline_graph import PipelineRunner
from medagent.studies.preflight import check_planner_endpoints
from medagent.studies.scheduling import StartupGate, heap_frozen
from medagent.studies.vqa_graph import VqaGraph
from medagent.studies.vqa_runner import VqaCaseRunner, question_columns
from medagent.tools.builtin import Toolbox
from medagent.tools.invoke import ToolCallRecord, label_probabilities
from medagent.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from medagent.studies.process_executor import ProcessCases
    from medagent.studies.ray_executor import RayCases

logger = logging.getLogger(__name__)


class StudyProgress(BaseModel):
    kind: Literal["started", "case", "finished"]
    run_id: str
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    case_id: str | None = None
    repeat: int | None = None
    status: str | None = None
    attempts: int | None = None  # 2: the case's first worker died and it ran again (executor: ray)
    node_id: str | None = None  # the Ray node (executor: ray) or the worker process, pid-N (processes), of the case


@dataclass
class CaseOutcome:
    """A computed case as the store takes it, with where and how many times it was computed."""

    result: CaseResult
    messages: list[dict[str, Any]]
    calls: list[ToolCallRecord]
    attempts: int = 1
    node_id: str | None = None


class _WorkItem(BaseModel):
    arm: str
    case: Case
    repeat: int
    key: str  # the stored case id: the dataset's, prefixed by the arm when a study compares arms
    variant: tuple[str, str] | None = None  # dialogue graphs: (temperament, bias)
    memory_keys: tuple[str, ...] = ()  # vqa graphs keeping memory: the stored keys of the case's earlier questions
    # executor ray: str(path) -> id of the image the driver attached (de-identified) and shipped; the case uses the
    # stored image and reads no file. Empty on a local run: every image is attached from its path here
    attached: dict[str, str] = Field(default_factory=dict)


def _columns(case: Case, calls: Sequence[ToolCallRecord] = (), registry: ToolRegistry | None = None) -> dict[str, Any]:
    """Flat per-case values the reports read: truth, the label probabilities tools declare (the first call
    that scores a label gives its ``prob.<label>``), subgroups."""
    columns: dict[str, Any] = {f"truth.{name}": value for name, value in case.labels.items()}
    columns.update({f"subgroup.{name}": value for name, value in case.subgroups.items()})
    for call in calls:
        for label, probability in ((label_probabilities(registry, call) if registry else None) or {}).items():
            columns.setdefault(f"prob.{label}", probability)
    return columns


async def _build_planner(spec: PlannerSpec, pool: PlannerPool, targets: TargetPolicy) -> Planner:
    """The role's planner from the one planner factory, bounded by its endpoint's shared limit: its backend
    (one embedded server for every arm), or a ``_target_`` factory resolved under the study's policy."""
    from medagent.studies.components import TargetRef

    if isinstance(spec.backend, TargetRef):
        return await pool.build(spec.planner_config(), factory=targets.resolve(spec.backend.target),
                                kwargs=spec.backend.kwargs)
    return await pool.build(spec.planner_config())


def _add_study_tools(config: StudyConfig, root: Assembly) -> None:
    """The tools of the study's ``experts:`` entries with a ``_target_``, into the root's toolbox: each factory,
    resolved under the policy the study was validated with, is called as ``factory(settings, **kwargs)``
    and must return exactly the tools the entry names in ``tools:`` (else a typed expert_tools_mismatch)."""
    from medagent.errors import ExpertToolsMismatch

    for index, ref in enumerate(config.experts):
        if isinstance(ref, ExpertRef):
            try:
                tools = root.tool_factory(config.targets.resolve(ref.target), ref.kwargs, expected=ref.tools)
            except ExpertToolsMismatch as exc:
                raise ExpertToolsMismatch(f"experts[{index}] ({ref.target}): {exc.message}", **exc.details,
                                          entry=index) from exc
            root.add_tools(tools)


class StudyRunner:
    def __init__(self, config: StudyConfig, store: StudyStore, settings: Settings | None = None,
                 toolbox: Toolbox | None = None, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        self.config = config
        self.store = store
        self.settings = settings or Settings()
        # the parts come from the composition root; the study's own tool factories join its toolbox
        self.root = Assembly(self.settings, toolbox=toolbox, per_endpoint=config.concurrency.per_planner_endpoint)
        try:
            _add_study_tools(config, self.root)
        except BaseException:
            self.root.toolbox.close()
            raise
        self.toolbox = self.root.toolbox
        for tool, limit in config.concurrency.expert_limits(self.toolbox.registry.names()).items():
            self.toolbox.registry.set_concurrency(tool, limit)
        self.planners: PlannerPool = self.root.planners
        self._agents: dict[tuple[str, int], Any] = {}
        self._agent_lock = asyncio.Lock()
        self._compiled: PipelineRunner | None = None
        self._dialogue: DialogueCaseRunner | None = None
        self._vqa: VqaCaseRunner | None = None
        self._stored: dict[tuple[str, str, int], asyncio.Event] = {}
        self.skipped_rows: list[SkippedRow] = []
        self._role_planners: dict[tuple[str, int], dict[str, Planner]] = {}
        self.lease_ttl_s = lease_ttl_s
        self._worker_gate = StartupGate()  # execute_one: the start-up gate of a case worker's own cases
        dataset = config.dataset
        self._modality = dataset.modality.value if dataset is not None and dataset.modality else None

    def _pipeline(self) -> PipelineRunner:
        """The pipeline graph, compiled once per run rather than once per case."""
        if self._compiled is None:
            assert isinstance(self.config.graph, PipelineGraph)
            self._compiled = PipelineRunner(self.config.graph, self.toolbox)
        return self._compiled

    def _cases(self, limit: int | None) -> list[Case]:
        dataset = self.config.dataset
        if dataset is not None and dataset.type == "questions":  # the skipped rows are counted in the report
            found = load_question_set(dataset, self.config.base_dir, self.settings)
            self.skipped_rows = found.skipped
            return [question_case(question) for question in found.questions[:limit]]
        # with a limit only the first rows of a manifest are read
        return (list(itertools.islice(self.config.iter_cases(self.settings), limit)) if limit
                else self.config.cases(self.settings))

    def work(self, limit: int | None = None) -> list[_WorkItem]:
        cases = self._cases(limit)
        arms = list(self.config.arm_planners())
        graph = self.config.graph
        items = []
        for arm in arms:
            earlier: dict[str, list[str]] = {}  # a case's questions so far (kept memory)
            for index, case in enumerate(cases):
                key = case.case_id if len(arms) == 1 else f"{arm}:{case.case_id}"
                if isinstance(graph, VqaGraph) and graph.keep_memory and case.question is not None:
                    chain = earlier.setdefault(case.question.case_id or case.case_id, [])
                    items += [_WorkItem(arm=arm, case=case, repeat=repeat, key=key, memory_keys=tuple(chain))
                              for repeat in range(self.config.repeats)]
                    chain.append(key)
                    continue
                if not isinstance(graph, DialogueGraph):
                    items += [_WorkItem(arm=arm, case=case, repeat=repeat, key=key)
                              for repeat in range(self.config.repeats)]
                    continue
                assert case.dialogue is not None
                for variant in graph.variants(case.dialogue, index):
                    variant_key = f"{key}:{variant[0]}:{variant[1]}" if graph.multiplies() else key
                    items += [_WorkItem(arm=arm, case=case, repeat=repeat, key=variant_key, variant=variant)
                              for repeat in range(self.config.repeats)]
        return items

    def _dialogues(self) -> DialogueCaseRunner:
        """The dialogue runner, with the study's label set resolved once per run."""
        if self._dialogue is None:
            assert isinstance(self.config.graph, DialogueGraph)
            cases = [case.dialogue for case in self.config.cases(self.settings) if case.dialogue is not None]
            folders = [self.config.base_dir]
            if self.config.dataset is not None:
                folders.append((self.config.base_dir / self.config.dataset.path).resolve().parent)
            label_set = resolve_label_set(self.config.graph, cases, folders)
            self._dialogue = DialogueCaseRunner(self.config.graph, self.toolbox, label_set,
                                                self._modality, self.config.targets)
        return self._dialogue

    async def run(self, run_id: str | None = None, *, resume: bool = False, retry_failed: bool = False,
                  force: bool = False, limit: int | None = None) -> AsyncIterator[StudyProgress]:
        if run_id is not None:
            check_name(run_id, "the run id")
        # everything that can be refused (ids, the dataset, served planners) is checked before the run's row exists
        items = self.work(limit)
        await check_planner_endpoints(self.config)
        cluster = await self._cluster() if self.config.executor.type != "local" else None
        try:
            with heap_frozen():
                async with contextlib.aclosing(self._lease_and_run(run_id, items, resume=resume, force=force,
                                                                   retry_failed=retry_failed, cluster=cluster)) as events:
                    async for progress in events:
                        yield progress
        finally:
            if cluster is not None:
                await cluster.aclose()

    async def _cluster(self) -> RayCases | ProcessCases:
        """The study's case workers: processes of this machine or on its Ray cluster (refusals come before the
        run's row exists)."""
        if self.config.executor.type == "processes":
            from medagent.studies.process_executor import ProcessCases

            return await ProcessCases.open(self)
        from medagent.studies.ray_executor import RayCases

        return await RayCases.open(self)

    async def _lease_and_run(self, run_id: str | None, items: list[_WorkItem], *, resume: bool, retry_failed: bool,
                             force: bool, cluster: RayCases | ProcessCases | None) -> AsyncGenerator[StudyProgress, None]:
        digest = config_hash(self.config)
        dumped = self.config.model_dump(mode="json", by_alias=True)
        owner = new_owner()
        if resume or retry_failed:
            assert run_id is not None, "resuming needs the run id"
            await asyncio.to_thread(self.store.resume_run, run_id, dumped, digest, force=force,
                                    lease_owner=owner, lease_ttl_s=self.lease_ttl_s)
        else:
            run_id = run_id or f"{self.config.name}-{uuid.uuid4().hex[:8]}"
            await asyncio.to_thread(self.store.create_run, run_id, self.config.name, dumped, digest,
                                    lease_owner=owner, lease_ttl_s=self.lease_ttl_s)
        if self.skipped_rows:  # malformed dataset rows skipped (dataset.skip_malformed): counted, located
            located = [{"file": row.file, "row": row.row, "line": row.line, "field": row.field}
                       for row in self.skipped_rows[:100]]
            await asyncio.to_thread(self.store.add_metrics, run_id, [MetricValue(
                name="dataset.skipped_rows", value=len(self.skipped_rows), details={"first": located})])
        keeper = asyncio.create_task(self._keep_lease(run_id, owner))
        try:
            # aclosing: when this generator is closed, the cases stop before the lease is released
            async with contextlib.aclosing(self._run_items(run_id, items, retry_failed, keeper, cluster)) as events:
                async for progress in events:
                    yield progress
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, MedagentError):
                await keeper
            await asyncio.to_thread(self.store.release_lease, run_id, owner)

    async def _keep_lease(self, run_id: str, owner: str) -> None:
        """Refresh the run's lease while the run goes on (a few times per time-to-live)."""
        while True:
            await asyncio.sleep(self.lease_ttl_s / 4)
            await asyncio.to_thread(self.store.renew_lease, run_id, owner, self.lease_ttl_s)

    async def _run_items(self, run_id: str, items: list[_WorkItem], retry_failed: bool, keeper: asyncio.Task[None],
                         cluster: RayCases | ProcessCases | None = None) -> AsyncGenerator[StudyProgress, None]:
        finished = await asyncio.to_thread(self.store.completed_keys, run_id)
        failed_before = await asyncio.to_thread(self.store.failed_keys, run_id)
        skip = finished | (set() if retry_failed else failed_before)
        todo = [item for item in items if (item.key, item.repeat) not in skip]
        progress = StudyProgress(kind="started", run_id=run_id, total=len(items), skipped=len(items) - len(todo),
                                 done=len(items) - len(todo))
        yield progress
        limiter = asyncio.Semaphore(self.config.concurrency.cases)

        startup = StartupGate()

        writes: list[asyncio.Future[Any]] = []
        case_writes = CaseWrites(self.store, run_id, retry=retry_failed)
        # kept memory: a question starts once the case's previous question is stored (or was, in an earlier run)
        self._stored = {(item.arm, item.key, item.repeat): asyncio.Event() for item in items}
        for item in items:
            if (item.key, item.repeat) in skip:
                self._stored[(item.arm, item.key, item.repeat)].set()

        async def compute(item: _WorkItem) -> CaseOutcome:
            if cluster is not None:  # the same per-case path, on a worker of the cluster (execute_one)
                return await cluster.run_case(run_id, item)
            async with startup.admit():
                return CaseOutcome(*await self._execute(run_id, item))

        async def one(item: _WorkItem) -> tuple[_WorkItem, str, CaseOutcome]:
            try:
                if item.memory_keys:  # kept memory: the case's previous question is stored before it starts
                    await self._stored[(item.arm, item.memory_keys[-1], item.repeat)].wait()
                async with limiter:  # on a cluster too: the driver bounds the cases in flight across it
                    outcome = await compute(item)
                write = case_writes.submit(item.key, item.repeat, outcome)  # with the cases finishing meanwhile
                writes.append(write)
                return item, (await asyncio.shield(write)).record.status, outcome  # a write under way is never cut
            finally:
                self._stored[(item.arm, item.key, item.repeat)].set()

        tasks = [asyncio.ensure_future(one(item)) for item in todo]
        # a lost lease (another runner took the run over) stops every case of this runner at once
        keeper.add_done_callback(lambda _: [task.cancel() for task in tasks])
        try:
            for next_done in asyncio.as_completed(tasks):
                try:
                    item, status, outcome = await next_done
                finally:
                    if keeper.done() and not keeper.cancelled():
                        keeper.result()  # RunInProgress: the lease was lost
                progress = progress.model_copy(update={
                    "kind": "case", "done": progress.done + 1, "failed": progress.failed + (status == "failed"),
                    "case_id": item.key, "repeat": item.repeat, "status": status, "attempts": outcome.attempts,
                    "node_id": outcome.node_id})
                yield progress
        finally:
            # stopped early (the caller stopped reading, the lease was lost, an error): no case computes on
            # after this runner has let the run go, and no write is left half done
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *writes, return_exceptions=True)
            await self.aclose()
        await asyncio.to_thread(self.store.finish_run, run_id)
        yield progress.model_copy(update={"kind": "finished", "case_id": None, "repeat": None, "status": None,
                                          "attempts": None, "node_id": None})

    async def execute_one(self, run_id: str, item: _WorkItem) -> tuple[CaseResult, list[dict[str, Any]],
                                                                       list[ToolCallRecord]]:
        """One case on a worker of a study on a cluster: the per-case path of a local run. Its earlier questions
        (kept memory) were stored before the driver sent it."""
        for key in item.memory_keys:
            self._stored.setdefault((item.arm, key, item.repeat), asyncio.Event()).set()
        async with self._worker_gate.admit():
            return await self._execute(run_id, item)

    def failed_result(self, item: _WorkItem, error: BaseException, latency_s: float = 0.0) -> CaseResult:
        """A case that failed with ``error``, recorded typed; a failed question still says which it was."""
        question = item.case.question
        return CaseResult(status="failed", error=CaseError.from_exception(error), seed=self.config.seed_for(item.repeat),
                          latency_s=latency_s, columns={**_columns(item.case, []), **(question_columns(
                              item.arm, question) if question else {})},
                          result={"question": question.question, "options": question.options} if question else None)

    async def _execute(self, run_id: str, item: _WorkItem) -> tuple[CaseResult, list[dict[str, Any]],
                                                                    list[ToolCallRecord]]:
        started = time.perf_counter()
        seed = self.config.seed_for(item.repeat)
        try:
            if isinstance(self.config.graph, DialogueGraph):
                return await self._dialogue_case(item, seed)
            if isinstance(self.config.graph, VqaGraph):
                return await self._vqa_case(run_id, item, seed)
            if not item.case.images:
                raise PreconditionFailed("this case has no image to run the graph on", case=item.key)
            if isinstance(self.config.graph, AgentLoopGraph):
                return await self._agent_case(item, seed, started)
            image_ids = [case_image_id(self.toolbox, item.attached, path, self._modality) for path in item.case.images]
            outcome = await self._pipeline().run(image_ids[0], item.case.case_id)
        except Exception as exc:  # a case's failure is recorded, typed; the run goes on
            if not isinstance(exc, MedagentError):
                logger.exception("case %s failed unexpectedly", item.key)
            return self.failed_result(item, exc, time.perf_counter() - started), [], []
        calls = outcome.tool_calls
        outputs = [call.output for call in calls if call.ok]
        status: Literal["succeeded", "failed"] = "failed" if outcome.status == "failed" else "succeeded"
        return CaseResult(
            status=status, answer=outcome.summary, result={"outcome": outcome.status, "outputs": outcome.outputs},
            error=outcome.error if status == "failed" and outcome.error else
            (CaseError(code="step_failed", family="tool_failure", message="a required step failed")
             if status == "failed" else None),
            columns=_columns(item.case, calls, self.toolbox.registry), seed=seed,
            latency_s=time.perf_counter() - started, expert_weights=expert_weights(outputs),
        ), [], calls

    async def _agent_case(self, item: _WorkItem, seed: int, started: float) -> tuple[CaseResult, list[dict[str, Any]],
                                                                                 list[ToolCallRecord]]:
        from medagent.api import Agent, AgentConfig

        assert isinstance(self.config.graph, AgentLoopGraph)
        async with self._agent_lock:
            agent = self._agents.get((item.arm, seed))
            if agent is None:
                spec = self.config.arm_planners()[item.arm]["planner"].model_copy(update={"seed": seed})
                agent = Agent(AgentConfig(planner=spec.planner_config(), loop=self._loop_settings(),
                                          checkpoint_url="memory://"),  # a case is stored whole or rerun
                              settings=self.settings, toolbox=self.toolbox,
                              planner=await _build_planner(spec, self.planners, self.config.targets))
                self._agents[(item.arm, seed)] = await agent.start()
        session = agent.scratch_session()  # one conversation per case, read back from what its run ended with
        try:
            for path in item.case.images:  # content-addressed: the artifacts already stored are reused
                stored = stored_image(self.toolbox, item.attached, path)
                if stored is not None:
                    session.attach_stored(stored.id)
                else:
                    await session.attach(path, self._modality)
            answer = await session.ask(self.config.graph.question)
            calls = [ToolCallRecord.model_validate(call) for call in answer.tool_calls]  # as the loop made them
            outputs = [call.output for call in calls if call.ok]
            return CaseResult(status="succeeded", answer=answer.text, seed=seed,
                              columns=_columns(item.case, calls, self.toolbox.registry),
                              model_id=answer.model, latency_s=time.perf_counter() - started,
                              expert_weights=expert_weights(outputs)), await session.history(), calls
        finally:  # the case is stored whole or rerun afresh: its checkpoints are of no more use, and held in memory
            await session.delete()

    def _loop_settings(self) -> Any:
        """The study's loop limits; its ``experts:`` list, when given, is the only tools offered and run."""
        assert isinstance(self.config.graph, AgentLoopGraph)
        loop = self.config.graph.loop
        if not self.config.experts:
            return loop
        experts = self.config.tool_names(self.toolbox.registry.names())
        allowed = [name for name in experts if loop.allowed_tools is None or name in loop.allowed_tools]
        return loop.model_copy(update={"allowed_tools": allowed})

    async def _dialogue_case(self, item: _WorkItem, seed: int) -> tuple[CaseResult, list[dict[str, Any]],
                                                                      list[ToolCallRecord]]:
        assert item.case.dialogue is not None and item.variant is not None
        async with self._agent_lock:  # one client per (arm, seed, role), shared by that arm's cases
            planners = self._role_planners.get((item.arm, seed))
            if planners is None:
                roles = role_specs(self.config.arm_planners()[item.arm], seed)
                planners = {role: await _build_planner(spec, self.planners, self.config.targets)
                            for role, spec in roles.items()}
                self._role_planners[(item.arm, seed)] = planners
        temperament, bias = item.variant
        return await self._dialogues().run(item.case.dialogue, planners, temperament=temperament, bias=bias,
                                           seed=seed, subgroups=item.case.subgroups, attached=item.attached)

    async def _arm_planner(self, arm: str, seed: int, role: Role = "planner") -> Planner:
        async with self._agent_lock:  # one client per (arm, seed, role), shared by that arm's questions
            planner = self._role_planners.setdefault((arm, seed), {}).get(role)
            if planner is None:
                spec = self.config.arm_planners()[arm][role].model_copy(update={"role": role, "seed": seed})
                planner = await _build_planner(spec, self.planners, self.config.targets)
                self._role_planners[(arm, seed)][role] = planner
            return planner

    async def _vqa_agent(self, arm: str, seed: int, tools: list[str]) -> Any:
        """The agent loop of one (arm, seed), offering exactly the arm's experts."""
        from medagent.api import Agent, AgentConfig

        assert isinstance(self.config.graph, VqaGraph)
        planner = await self._arm_planner(arm, seed)
        async with self._agent_lock:
            agent = self._agents.get((arm, seed))
            if agent is None:
                loop = self.config.graph.loop.model_copy(update={"allowed_tools": tools})
                agent = Agent(AgentConfig(planner=planner.config, loop=loop, checkpoint_url="memory://"),
                              settings=self.settings, toolbox=self.toolbox, planner=planner)
                self._agents[(arm, seed)] = agent = await agent.start()
            return agent

    async def _vqa_case(self, run_id: str, item: _WorkItem, seed: int) -> tuple[CaseResult, list[dict[str, Any]],
                                                                                 list[ToolCallRecord]]:
        assert item.case.question is not None
        if item.memory_keys:  # the case's previous question first: its answer is part of this one's context
            await self._stored[(item.arm, item.memory_keys[-1], item.repeat)].wait()
        if self._vqa is None:
            self._vqa = VqaCaseRunner(self.config, self.toolbox, self.store, self._modality)
        planner = await self._arm_planner(item.arm, seed)
        judging = isinstance(self.config.graph, VqaGraph) and self.config.graph.judge
        judge = await self._arm_planner(item.arm, seed, "assessor") if judging else None
        return await self._vqa.run(run_id, item.arm, item.case.question, item.repeat, seed, planner,
                                   memory_keys=item.memory_keys, agent_for=self._vqa_agent, judge_planner=judge,
                                   attached=item.attached)

    async def aclose(self) -> None:
        for agent in self._agents.values():
            await agent.aclose()
        self._agents.clear()
        self._role_planners.clear()
        await self.planners.aclose()


async def run_study(config: StudyConfig, *, store: StudyStore | None = None, settings: Settings | None = None,
                    run_id: str | None = None, resume: bool = False, retry_failed: bool = False,
                    force: bool = False, limit: int | None = None,
                    toolbox: Toolbox | None = None) -> AsyncIterator[StudyProgress]:
    """The library entry point: typed progress events while the study runs. ``toolbox``: one the caller built
    (and closes), e.g. the one whose plugin tools it validated the study against."""
    settings = settings or Settings()
    own_store = store is None
    store = store or StudyStore.open(config.store.url, settings.home)
    runner = StudyRunner(config, store, settings, toolbox)
    try:
        async for event in runner.run(run_id, resume=resume, retry_failed=retry_failed, force=force, limit=limit):
            yield event
    finally:
        if toolbox is None:
            runner.toolbox.close()
        if own_store:
            store.close()
