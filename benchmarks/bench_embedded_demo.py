"""Embedded-planner success: seeded runs of the README demo on the real llama.cpp server.

A run succeeds when the planner makes a valid expert call (it ran without error) and the answer uses
its result (names the tool or repeats a number from its output; medagent.agents.grounding).
Goal: >= 8 of 10.

    .venv/bin/python benchmarks/bench_embedded_demo.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import pydicom.examples

from medagent.agents.grounding import answer_uses_results
from medagent.agents.planner import PlannerConfig
from medagent.api import Agent, AgentConfig
from medagent.cli.chat import DEMO_QUESTION
from medagent.config import Settings


async def main(runs: int) -> dict[str, object]:
    home = Path(tempfile.mkdtemp())
    settings = Settings(home=home, xrv_cache_dir=home / "xrv")
    outcomes = []
    for seed in range(runs):
        config = AgentConfig(planner=PlannerConfig(seed=seed), checkpoint_url=str(home / "sessions.sqlite"))
        async with Agent(config, settings=settings) as agent:
            session = agent.session()
            await session.attach(pydicom.examples.get_path("ct"))
            started = time.perf_counter()
            answer = await session.ask(DEMO_QUESTION)
            elapsed = time.perf_counter() - started
        valid_call = any(call["ok"] for call in answer.tool_calls)
        uses = answer_uses_results(answer.text, answer.tool_calls, DEMO_QUESTION)
        outcomes.append({"seed": seed, "valid_expert_call": valid_call, "answer_uses_result": uses,
                         "tools": [call["tool"] for call in answer.tool_calls], "seconds": round(elapsed, 1),
                         "answer": (answer.text or "")[:160]})
    successes = sum(1 for o in outcomes if o["valid_expert_call"] and o["answer_uses_result"])
    return {"runs": runs, "successes": successes, "goal": ">= 8/10", "model": "SmolLM2-135M-Instruct Q4_1",
            "outcomes": outcomes}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    print(json.dumps(asyncio.run(main(parser.parse_args().runs)), indent=2))
