"""Citation rate: how often a planner's answer about a real chest X-ray uses the expert result it obtained.

A run counts when the planner made a valid expert call (it ran without error) and the prose uses its result
(names the tool or repeats a number from its output; medagent.agents.grounding.answer_uses_results). This is
a property of the model, not of medagent, so it is measured here as a rate over N seeded questions instead of
being asserted by a test (tests assert only what structured tool calling guarantees).

    .venv/bin/python benchmarks/bench_citation_rate.py --endpoint http://127.0.0.1:8000/v1 --model smollm2
    .venv/bin/python benchmarks/bench_citation_rate.py --runs 8            # the embedded llama.cpp planner

The images are the shared NIH chest X-rays (../shared/data/torchxrayvision-nih, or MEDAGENT_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from medagent.agents.grounding import answer_uses_results
from medagent.agents.planner import PlannerConfig
from medagent.api import Agent, AgentConfig
from medagent.config import Settings

QUESTIONS = ("Where are the lungs in this image?", "Is the heart enlarged?", "Is this image of usable quality?",
             "Is there a pleural effusion?")
SHARED_DATA = Path(os.environ.get("MEDAGENT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGES = (SHARED_DATA / "torchxrayvision-nih" / "00000001_000.png",
          SHARED_DATA / "torchxrayvision-nih" / "00027426_000.png")


def rate(outcomes: list[dict[str, Any]]) -> float:
    """The share of runs with a valid expert call whose answer uses its result."""
    hits = sum(1 for o in outcomes if o["valid_expert_call"] and o["answer_uses_result"])
    return hits / len(outcomes) if outcomes else 0.0


async def main(runs: int, endpoint: str | None, model: str | None) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp())
    settings = Settings(home=home, xrv_cache_dir=home / "xrv", allow_untrained_test_only=True)
    outcomes: list[dict[str, Any]] = []
    for run in range(runs):
        question, image = QUESTIONS[run % len(QUESTIONS)], IMAGES[run % len(IMAGES)]
        options: dict[str, Any] = {"seed": run, "tool_calling": "structured", "read_timeout_s": 180}
        if endpoint:
            options.update(endpoint=endpoint, model=model)
        config = AgentConfig(planner=PlannerConfig(**options), checkpoint_url=str(home / "sessions.sqlite"))
        async with Agent(config, settings=settings) as agent:
            session = agent.session()
            await session.attach(image, "DX")
            started = time.perf_counter()
            answer = await session.ask(question)
            elapsed = time.perf_counter() - started
        outcomes.append({"seed": run, "question": question, "model": answer.model,
                         "valid_expert_call": any(call["ok"] for call in answer.tool_calls),
                         "answer_uses_result": answer_uses_results(answer.text, answer.tool_calls, question),
                         "tools": [call["tool"] for call in answer.tool_calls], "seconds": round(elapsed, 1),
                         "answer": (answer.text or "")[:160]})
    return {"runs": runs, "citation_rate": round(rate(outcomes), 3), "outcomes": outcomes}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--endpoint", default=None, help="an OpenAI-compatible server; default: embedded")
    parser.add_argument("--model", default=None, help="the served model name (with --endpoint)")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.runs, arguments.endpoint, arguments.model)), indent=2))
