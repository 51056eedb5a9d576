"""Orchestration overhead: one agent step of medagent's graph vs a minimal bare LangGraph loop.

Both run the same scripted planner (no-op tool calls, then an answer) without a checkpointer;
A and B alternate (ABAB...) in one run so drift affects both alike. Two figures per graph:
``invoke_ms`` is a whole question with one tool step (graph start-up included), and ``ms_per_step``
is the marginal cost of one more planner->tool round trip, (T(6 steps) - T(1 step)) / 5.
medagent's step is the whole contract: the offer, the gate, the one invocation path (validation,
policy, timeout, a typed call record), the fenced result.
Goal: medagent <= 1.1x the bare loop per step and under 2 ms per step.

``--clock cpu`` times with the process's CPU clock instead of the wall clock: on a machine other
processes keep busy, waiting for a core is not counted (threads of the process are).

    .venv/bin/python benchmarks/bench_orchestration.py [--rounds 200] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, tool_call
from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.imaging.record import ImageRecord, Modality
from medagent.tools import ImageId, Tool, ToolContext, ToolPolicy
from medagent.tools.builtin import Toolbox
from medagent.workflows.agent_loop import AgentLoop, LoopSettings

LONG = 6  # tool steps in the long question


class NoopInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: ImageId


class NoopOutput(BaseModel):
    ok: bool = True


async def _noop(arguments: NoopInput, context: ToolContext) -> NoopOutput:
    return NoopOutput()


def scripted(tool_steps: int) -> Any:
    def script(request: PlannerRequest) -> Any:
        if sum(1 for message in request.messages if message["role"] == "tool") >= tool_steps:
            return "done"
        return [tool_call("noop", {"image_id": request.image_ids()[0] if request.tools else "img-0"})]
    return script


class BareState(TypedDict, total=False):
    messages: Annotated[list[dict[str, Any]], operator.add]


def bare_graph(planner: ScriptedPlanner) -> Any:
    async def plan(state: BareState) -> dict[str, Any]:
        turn = await planner.complete(state["messages"], tools=[{"function": {"name": "noop", "parameters": {
            "properties": {"image_id": {"enum": ["img-0"]}}}}}])
        return {"messages": [turn.as_message()]}

    async def act(state: BareState) -> dict[str, Any]:
        call = state["messages"][-1]["tool_calls"][0]
        output = await _noop(NoopInput.model_validate_json(call["function"]["arguments"]), None)  # type: ignore[arg-type]
        return {"messages": [{"role": "tool", "tool_call_id": call["id"], "content": output.model_dump_json()}]}

    graph = StateGraph(BareState)
    graph.add_node("plan", plan)
    graph.add_node("act", act)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", lambda s: "act" if s["messages"][-1].get("tool_calls") else END)
    graph.add_edge("act", "plan")
    return graph.compile()


async def main(rounds: int, clock: str = "wall") -> dict[str, Any]:
    now = time.process_time if clock == "cpu" else time.perf_counter
    home = Path(tempfile.mkdtemp())
    toolbox = Toolbox(Settings(home=home, xrv_cache_dir=home / "xrv"))
    toolbox.registry.register(Tool(name="noop", card=ModelCard(summary="does nothing", modalities=None),
                                   input_model=NoopInput, output_model=NoopOutput, run=_noop,
                                   policy=ToolPolicy(timeout_s=5)))
    pixels = np.zeros((8, 8), dtype=np.float32)
    image = toolbox.store.put_image(ImageRecord(pixels=pixels, modality=Modality.DX, source_format="png",
                                                source_sha256="bench"))
    question = {"messages": [{"role": "user", "content": "go"}]}
    graphs = {}
    for steps in (1, LONG):
        graphs[("medagent", steps)] = (AgentLoop(ScriptedPlanner(scripted(steps)), toolbox,
                                                 LoopSettings(max_steps=LONG + 1)).compile(),
                                       {**question, "image_ids": [image.id]})
        graphs[("bare", steps)] = (bare_graph(ScriptedPlanner(scripted(steps))), question)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in graphs}
    for round_index in range(rounds + 20):  # the first 20 rounds warm up
        for key, (graph, inputs) in graphs.items():  # A B A B ...
            started = now()
            await graph.ainvoke(inputs)
            if round_index >= 20:
                times[key].append(now() - started)
    toolbox.close()
    median = {key: statistics.median(values) * 1000 for key, values in times.items()}
    result: dict[str, Any] = {"rounds": rounds, "clock": clock}
    for name in ("medagent", "bare"):
        result[f"{name}_invoke_ms"] = round(median[(name, 1)], 3)
        result[f"{name}_ms_per_step"] = round((median[(name, LONG)] - median[(name, 1)]) / (LONG - 1), 3)
    result["invoke_ratio"] = round(result["medagent_invoke_ms"] / result["bare_invoke_ms"], 2)
    result["step_ratio"] = round(result["medagent_ms_per_step"] / result["bare_ms_per_step"], 2)
    result["goal"] = "step_ratio <= 1.1 and < 2 ms per step"
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.rounds, options.clock)), indent=2))
