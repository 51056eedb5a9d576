"""A fixed pipeline as a LangGraph graph: one node per step, run in order, with conditions as data."""

from __future__ import annotations

import operator
import time
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from medagent.errors import MedagentError
from medagent.studies.pipeline import PipelineGraph, PipelineStep, render_arguments
from medagent.tools.builtin import Toolbox
from medagent.tools.spec import ToolContext

CaseStatus = Literal["succeeded", "gated", "failed"]


class StepCall(BaseModel):
    step: str
    tool: str
    finding: str | None = None
    arguments: dict[str, Any]
    ok: bool
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    duration_s: float


class PipelineOutcome(BaseModel):
    status: CaseStatus
    outputs: dict[str, Any] = Field(description="step id -> output JSON (per finding for for_each steps)")
    tool_calls: list[StepCall]
    summary: str
    error: dict[str, Any] | None = None


class _State(TypedDict, total=False):
    outputs: Annotated[dict[str, Any], lambda left, right: {**left, **right}]
    calls: Annotated[list[dict[str, Any]], operator.add]
    stopped: str | None  # "gated" or "failed"
    error: dict[str, Any] | None


class PipelineRunner:
    """Compiles a :class:`PipelineGraph` once; ``run`` executes it for one image."""

    def __init__(self, graph: PipelineGraph, toolbox: Toolbox) -> None:
        self.spec = graph
        self.toolbox = toolbox
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

    def _source_step(self, step: PipelineStep) -> str | None:
        if step.for_each is None:
            return None
        if step.for_each.from_step:
            return step.for_each.from_step
        earlier = [s.id for s in self.spec.steps[: self.spec.steps.index(step)] if s.tool == "classify_chest_xray"]
        return earlier[-1] if earlier else None

    def _node(self, step: PipelineStep) -> Any:
        async def node(state: _State, config: RunnableConfig) -> dict[str, Any]:
            context: ToolContext = config["configurable"]["context"]
            variables: dict[str, str] = config["configurable"]["variables"]
            outputs = state.get("outputs", {})
            source = self._source_step(step)
            if step.when is not None and not step.when.evaluate(outputs, source_step=source):
                return {"outputs": {step.id: None}}
            findings: list[str | None] = [None]
            if step.for_each is not None:
                findings = list(step.for_each.findings(outputs, source or ""))
            results: dict[str, Any] = {}
            calls: list[dict[str, Any]] = []
            for finding in findings:
                arguments = render_arguments(step.arguments, {**variables, "finding": finding or ""})
                record = await self._call(step, finding, arguments, context)
                calls.append(record.model_dump(mode="json"))
                if not record.ok and not step.optional:
                    return {"calls": calls, "stopped": "failed", "error": record.error,
                            "outputs": {step.id: None}}
                if finding is None:
                    results[step.id] = record.output
                else:
                    results.setdefault(step.id, {})[finding] = record.output
            update: dict[str, Any] = {"calls": calls, "outputs": {step.id: results.get(step.id, {})}}
            if step.gate is not None and not step.gate.evaluate({**outputs, **update["outputs"]}):
                update["stopped"] = "gated"
            return update
        return node

    async def _call(self, step: PipelineStep, finding: str | None, arguments: dict[str, Any],
                    context: ToolContext) -> StepCall:
        started = time.perf_counter()
        try:
            output = await self.toolbox.call(step.tool, arguments, context)
        except MedagentError as exc:
            return StepCall(step=step.id, tool=step.tool, finding=finding, arguments=arguments, ok=False,
                                  error=exc.to_dict(), duration_s=round(time.perf_counter() - started, 4))
        return StepCall(step=step.id, tool=step.tool, finding=finding, arguments=arguments, ok=True,
                              output=output.model_dump(mode="json"),
                              duration_s=round(time.perf_counter() - started, 4))

    async def run(self, image_id: str, case_id: str) -> PipelineOutcome:
        context = self.toolbox.context([image_id])
        config = {"configurable": {"context": context, "variables": {"image": image_id, "case_id": case_id}}}
        state = await self.graph.ainvoke({"outputs": {}, "calls": []}, config)
        stopped = state.get("stopped")
        status: CaseStatus = "failed" if stopped == "failed" else "gated" if stopped == "gated" else "succeeded"
        calls = [StepCall.model_validate(call) for call in state.get("calls", [])]
        return PipelineOutcome(status=status, outputs=state.get("outputs", {}), tool_calls=calls,
                               summary=self._summary(state.get("outputs", {}), calls, status),
                               error=state.get("error"))

    def _summary(self, outputs: dict[str, Any], calls: list[StepCall], status: CaseStatus) -> str:
        include = self.spec.summary.include or [step.id for step in self.spec.steps]
        lines = [f"pipeline {status}"]
        by_step = {call.step: call for call in calls}
        for step_id in include:
            if step_id not in by_step:
                lines.append(f"{step_id}: skipped")
                continue
            call = by_step[step_id]
            lines.append(f"{step_id}: " + ("ok" if call.ok else f"error {call.error.get('code') if call.error else ''}"))
        return "; ".join(lines)
