"""Orchestration overhead: one agent step of medagent's graph vs a minimal bare LangGraph loop.

Both run the same scripted planner (one no-op tool call, then an answer) without a checkpointer;
A and B alternate (ABAB...) in one run so drift affects both alike. A step is one planner->tool->planner
round trip. Goal: medagent <= 1.3x the bare loop and under 2 ms per step.

    .venv/bin/python benchmarks/bench_orchestration.py [--rounds 200]
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
from medagent.config import Settings
from medagent.experts.card import ModelCard
from medagent.imaging.record import ImageRecord, Modality
from medagent.tools import ImageId, Tool, ToolContext, ToolPolicy
from medagent.tools.builtin import Toolbox
from medagent.workflows.agent_loop import AgentLoop


class NoopInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: ImageId


class NoopOutput(BaseModel):
    ok: bool = True


async def _noop(arguments: NoopInput, context: ToolContext) -> NoopOutput:
    return NoopOutput()


def script(request: PlannerRequest) -> Any:
    if request.messages[-1]["role"] == "tool":
        return "done"
    return [tool_call("noop", {"image_id": request.image_ids()[0] if request.tools else "img-0"})]


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


async def main(rounds: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp())
    toolbox = Toolbox(Settings(home=home, xrv_cache_dir=home / "xrv"))
    toolbox.registry.register(Tool(name="noop", card=ModelCard(summary="does nothing", modalities=None),
                                   input_model=NoopInput, output_model=NoopOutput, run=_noop,
                                   policy=ToolPolicy(timeout_s=5)))
    pixels = np.zeros((8, 8), dtype=np.float32)
    image = toolbox.store.put_image(ImageRecord(pixels=pixels, modality=Modality.DX, source_format="png",
                                                source_sha256="bench"))
    ours = AgentLoop(ScriptedPlanner(script), toolbox).compile()
    bare = bare_graph(ScriptedPlanner(script))
    question = {"messages": [{"role": "user", "content": "go"}]}
    ours_input = {**question, "image_ids": [image.id]}
    for _ in range(20):  # warm up both
        await ours.ainvoke(ours_input)
        await bare.ainvoke(question)
    ours_times, bare_times = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        await ours.ainvoke(ours_input)
        ours_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        await bare.ainvoke(question)
        bare_times.append(time.perf_counter() - started)
    toolbox.close()
    ours_ms, bare_ms = statistics.median(ours_times) * 1000, statistics.median(bare_times) * 1000
    return {"rounds": rounds, "medagent_ms_per_step": round(ours_ms, 3), "bare_langgraph_ms_per_step": round(bare_ms, 3),
            "ratio": round(ours_ms / bare_ms, 2), "goal": "ratio <= 1.3 and < 2 ms per step"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args().rounds)), indent=2))
