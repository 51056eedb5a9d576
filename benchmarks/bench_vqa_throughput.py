"""VQA study throughput: N multiple-choice questions through the study runner against a real local
OpenAI-compatible server (127.0.0.1, its own process) that answers each request after a fixed latency L and serves
at most c requests at once, answering with the constrained JSON ``{"answer": "A"}``.

Ideal wall time is ceil(N / c) * L; efficiency = ideal / measured (goal >= 0.9, as for the other studies). Each
question attaches a real chest X-ray, builds its fenced prompt, asks for a schema-constrained answer, extracts and
scores it and writes its row to SQL: the figure measures medagent's runner, not a model. A two-question warm-up run
first pays the one-off imports.

    .venv/bin/python benchmarks/bench_vqa_throughput.py [--questions 64] [--latency 1.0] [--capacity 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_study_concurrency import _server  # noqa: E402
from medagent.config import Settings  # noqa: E402
from medagent.store import StudyStore  # noqa: E402
from medagent.studies import parse_study  # noqa: E402
from medagent.studies.runner import run_study  # noqa: E402

IMAGE = Path(os.environ.get("MEDAGENT_SHARED_DATA", REPO.parent / "shared" / "data")) / "torchxrayvision-nih" / \
    "00000001_000.png"


async def _run(folder: Path, endpoint: str, questions: int, concurrency: int, name: str) -> tuple[float, float]:
    shutil.copy(IMAGE, folder / "cxr.png")
    rows = [{"id": f"q{index:04d}", "image": "cxr.png", "question": f"Question {index}: which finding?",
             "options": {"A": "cardiomegaly", "B": "effusion", "C": "no finding"}, "answer": "ABC"[index % 3]}
            for index in range(questions)]
    (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    text = f"""name: {name}
planners:
  planner: {{backend: openai, endpoint: "{endpoint}", model: fake-model}}
graph: {{type: vqa, mode: direct}}
dataset: {{type: questions, layout: manifest, path: {name}.jsonl, modality: DX}}
concurrency: {{cases: {concurrency}, per_planner_endpoint: {concurrency}}}
"""
    config = parse_study(text, str(folder / f"{name}.yaml"))
    settings = Settings(home=folder / "home")
    with StudyStore.open(None, settings.home) as store:
        started = None
        async for event in run_study(config, store=store, settings=settings, run_id=name):
            if event.kind == "started":
                started = time.perf_counter()
        assert started is not None
        elapsed = time.perf_counter() - started
        cases = store.cases(name)
        assert {case.status for case in cases} == {"succeeded"}
        parsed = sum(int(case.columns["vqa.parsed"] or 0) for case in cases) / len(cases)
    return elapsed, parsed


async def main(questions: int, latency: float, capacity: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp())
    try:
        with _server(latency, capacity, '{"answer": "A"}') as url:
            await _run(folder, url, 2, 2, "warm-up")
            elapsed, parsed = await _run(folder, url, questions, capacity * 2, "questions")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ideal = math.ceil(questions / capacity) * latency
    return {"questions": questions, "latency_s": latency, "capacity": capacity, "wall_s": round(elapsed, 2),
            "ideal_wall_s": ideal, "questions_per_s": round(questions / elapsed, 2),
            "ideal_questions_per_s": round(questions / ideal, 2), "efficiency": round(ideal / elapsed, 3),
            "parsed_rate": parsed, "goal": "efficiency >= 0.9"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--capacity", type=int, default=16)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.questions, arguments.latency, arguments.capacity)), indent=2))
