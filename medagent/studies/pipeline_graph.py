"""A fixed pipeline as a LangGraph graph: one node per step, run in order, with conditions as data."""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from medagent.studies.pipeline import PipelineGraph, PipelineStep, render_arguments
from medagent.tools.builtin import Toolbox
from medagent.tools.invoke import ErrorRecord, ToolCallRecord, declares_label_probabilities, invoke
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import ToolContext
from medagent.yaml_located import StudyConfigError


def _merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    return {**left, **right}


CaseStatus = Literal["succeeded", "gated", "failed"]


class PipelineOutcome(BaseModel):
    status: CaseStatus
    outputs: dict[str, Any] = Field(description="step id -> output JSON (per finding for for_each steps)")
    tool_calls: list[ToolCallRecord] = Field(description="every call in order; call_id: the step id, or "
                                             "'<step>:<finding>' in a for_each step")
    summary: str
    error: ErrorRecord | None = None


class _State(TypedDict, total=False):
    outputs: Annotated[dict[str, Any], _merge]
    labels: Annotated[dict[str, dict[str, float]], _merge]  # step id -> the label probabilities its tool declares
    calls: Annotated[list[tuple[str, ToolCallRecord]], operator.add]  # (step id, record); no checkpointer: kept live
    stopped: str | None  # "gated" or "failed"
    error: ErrorRecord | None


def for_each_sources(graph: PipelineGraph, registry: ToolRegistry) -> dict[str, str]:
    """Each for_each step's source step: the one it names, else the earliest earlier step whose tool declares
    label probabilities. Raises StudyConfigError when a source declares none (its labels would never come)."""
    sources: dict[str, str] = {}
    for index, step in enumerate(graph.steps):
        if step.for_each is None:
            continue
        earlier = graph.steps[:index]
        declaring = [s.id for s in earlier if s.tool in registry
                     and declares_label_probabilities(registry.get(s.tool).output_model)]
        source = step.for_each.from_step or (declaring[0] if declaring else None)
        if source is None or source not in declaring:
            where = f"'{source}'" if source else "no earlier step"
            raise StudyConfigError(f"for_each of step '{step.id}': {where} has a tool that declares label "
                                   "probabilities (a classifier); name one in from_step",
                                   field=f"graph.steps[{index}].for_each")
        sources[step.id] = source
    return sources


class PipelineRunner:
    """Compiles a :class:`PipelineGraph` once; ``run`` executes it for one image."""

    def __init__(self, graph: PipelineGraph, toolbox: Toolbox) -> None:
        self.spec = graph
        self.toolbox = toolbox
        self.sources = for_each_sources(graph, toolbox.registry)
        builder = StateGraph(_State)
        previous = START
        for step in graph.steps:
            builder.add_node(step.id, self._node(step))
            if previous is START:
                builder.add_edge(START, step.id)
            else:
                builder.add_conditional_edges(previous, self._continue_to(step.id))
            previous = step.id
        builder.add_edge(previous, END)
        self.graph = builder.compile()

    @staticmethod
    def _continue_to(next_step: str) -> Any:
        async def route(state: _State) -> str:
            return END if state.get("stopped") else next_step
        return route

    def _node(self, step: PipelineStep) -> Any:
        registry = self.toolbox.registry
        source = self.sources.get(step.id)

        async def node(state: _State, config: RunnableConfig) -> dict[str, Any]:
            context: ToolContext = config["configurable"]["context"]
            variables: dict[str, str] = config["configurable"]["variables"]
            outputs, labels = state.get("outputs", {}), state.get("labels", {})
            if step.when is not None and not step.when.evaluate(outputs, labels, source_step=source):
                return {"outputs": {step.id: None}}
            findings: list[str | None] = [None]
            if step.for_each is not None:
                findings = list(step.for_each.findings(labels.get(source or "")))
            results: dict[str, Any] = {}
            calls: list[tuple[str, ToolCallRecord]] = []
            update: dict[str, Any] = {"calls": calls}
            for finding in findings:
                arguments = render_arguments(step.arguments, {**variables, "finding": finding or ""})
                call_id = step.id if finding is None else f"{step.id}:{finding}"
                done = await invoke(registry, step.tool, arguments, context, call_id=call_id)
                record = done.record
                calls.append((step.id, record))
                if not record.ok and not step.optional:
                    return {**update, "stopped": "failed", "error": record.error, "outputs": {step.id: None}}
                if finding is None:
                    results[step.id] = record.output
                    probabilities = done.probabilities()
                    if probabilities is not None:
                        update["labels"] = {step.id: probabilities}
                else:
                    results.setdefault(step.id, {})[finding] = record.output
            update["outputs"] = {step.id: results.get(step.id, {})}
            if step.gate is not None and not step.gate.evaluate({**outputs, **update["outputs"]},
                                                                 {**labels, **update.get("labels", {})}):
                update["stopped"] = "gated"
            return update
        return node

    async def run(self, image_id: str, case_id: str) -> PipelineOutcome:
        context = self.toolbox.context([image_id])
        config = {"configurable": {"context": context, "variables": {"image": image_id, "case_id": case_id}}}
        start: _State = {"outputs": {}, "labels": {}, "calls": []}
        state = await self.graph.ainvoke(start, config)  # type: ignore[call-overload]
        stopped = state.get("stopped")
        status: CaseStatus = "failed" if stopped == "failed" else "gated" if stopped == "gated" else "succeeded"
        calls: list[tuple[str, ToolCallRecord]] = state.get("calls", [])
        return PipelineOutcome(status=status, outputs=state.get("outputs", {}),
                               tool_calls=[record for _, record in calls],
                               summary=self._summary(calls, status), error=state.get("error"))

    def _summary(self, calls: list[tuple[str, ToolCallRecord]], status: CaseStatus) -> str:
        include = self.spec.summary.include or [step.id for step in self.spec.steps]
        lines = [f"pipeline {status}"]
        by_step = dict(calls)  # the last call of each step
        for step_id in include:
            call = by_step.get(step_id)
            if call is None:
                lines.append(f"{step_id}: skipped")
                continue
            lines.append(f"{step_id}: " + ("ok" if call.ok else f"error {call.error.code if call.error else ''}"))
        return "; ".join(lines)
