"""executor: processes — a study's cases computed by worker processes of this machine, against a real planner
server on 127.0.0.1 (its own thread here), with the driver as the one writer of a real SQLite store."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.errors import MedagentError
from medagent.store import StudyStore
from medagent.studies import parse_study
from medagent.studies.config import ConcurrencySpec
from medagent.studies.process_executor import LimitsTooSmall, shared_limits
from medagent.studies.runner import StudyProgress, run_study
from tests.fake_openai_server import Behaviour, FakeOpenAIServer


def _study(folder: Path, images: list[Path], url: str, *, cases: int, per_endpoint: int, workers: int) -> str:
    with (folder / "manifest.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "path"])
        writer.writerows([[f"case-{index:03d}", str(images[index % len(images)])] for index in range(cases)])
    return f"""name: process-study
planners:
  planner: {{backend: openai, endpoint: "{url}", model: fake-model, tool_calling: native}}
graph: {{type: agent_loop, question: "Describe the image."}}
dataset: {{type: manifest, path: manifest.csv, modality: DX, columns: {{path: path, case_id: case_id}}}}
concurrency: {{cases: 16, per_planner_endpoint: {per_endpoint}}}
executor: {{type: processes, workers: {workers}}}
"""


async def _run(folder: Path, text: str, settings: Settings, run_id: str) -> list[StudyProgress]:
    config = parse_study(text, str(folder / "study.yaml"))
    with StudyStore.open(None, settings.home) as store:
        return [event async for event in run_study(config, store=store, settings=settings, run_id=run_id)]


@pytest.mark.asyncio
async def test_cases_run_in_worker_processes_within_the_endpoint_limit(tmp_path: Path, settings: Settings,
                                                                        nih_images: list[Path]) -> None:
    with FakeOpenAIServer([Behaviour("slow", text="A frontal chest radiograph.", delay_s=0.2)]) as server:
        text = _study(tmp_path, nih_images, server.url, cases=24, per_endpoint=4, workers=2)
        events = await _run(tmp_path, text, settings, "r1")
    cases = [event for event in events if event.kind == "case"]
    assert events[-1].kind == "finished" and events[-1].done == 24 and events[-1].failed == 0
    workers = {event.node_id for event in cases}
    assert len(workers) == 2 and f"pid-{os.getpid()}" not in workers  # computed by both workers, not here
    assert server.peak_in_flight <= 4  # the endpoint's limit, shared by the workers, held across them
    with StudyStore.open(None, settings.home) as store:
        stored = store.cases("r1")
    assert sorted(case.case_id for case in stored) == [f"case-{index:03d}" for index in range(24)]
    assert {case.answer for case in stored} == {"A frontal chest radiograph."}
    # the images were attached (de-identified) by the workers into the run's artifact store, under one key
    assert len(list((settings.artifacts_dir / "index").glob("img-*.json"))) == len(nih_images)


@pytest.mark.asyncio
async def test_a_worker_that_dies_loses_and_duplicates_nothing(tmp_path: Path, settings: Settings,
                                                               nih_images: list[Path]) -> None:
    with FakeOpenAIServer([Behaviour("slow", text="Answered.", delay_s=0.3)]) as server:
        text = _study(tmp_path, nih_images, server.url, cases=32, per_endpoint=8, workers=2)
        config = parse_study(text, str(tmp_path / "study.yaml"))
        killed: str | None = None
        events = []
        with StudyStore.open(None, settings.home) as store:
            async for event in run_study(config, store=store, settings=settings, run_id="r2"):
                events.append(event)
                if event.kind == "case" and killed is None:  # its worker has more cases in flight
                    killed = event.node_id
                    assert killed is not None
                    os.kill(int(killed.removeprefix("pid-")), signal.SIGKILL)
            stored = store.cases("r2")
    assert events[-1].done == 32 and events[-1].failed == 0
    assert sorted(case.case_id for case in stored) == [f"case-{index:03d}" for index in range(32)]
    rerun = [event for event in events if event.kind == "case" and event.attempts == 2]
    assert rerun and all(event.node_id != killed for event in rerun)  # sent again, to the worker still alive


@pytest.mark.asyncio
async def test_limits_too_small_to_share_are_refused_before_the_run(tmp_path: Path, settings: Settings,
                                                                    nih_images: list[Path]) -> None:
    with FakeOpenAIServer([Behaviour("text", text="x")]) as server:
        text = _study(tmp_path, nih_images, server.url, cases=2, per_endpoint=1, workers=2)
        with pytest.raises(LimitsTooSmall) as caught:
            await _run(tmp_path, text, settings, "r3")
    assert "per_planner_endpoint is 1" in caught.value.message
    with StudyStore.open(None, settings.home) as store:
        assert store.runs() == []


def test_limits_are_split_into_shares_that_add_up_to_each_limit() -> None:
    limits = ConcurrencySpec(cases=9, per_planner_endpoint=7, per_expert={"segment": 4, "classify": 3})
    shares = [shared_limits(limits, 3, index) for index in range(3)]
    assert [share.per_planner_endpoint for share in shares] == [3, 2, 2]
    assert [share.cases for share in shares] == [3, 3, 3]
    assert [share.per_expert for share in shares] == [{"segment": 2, "classify": 1}, {"segment": 1, "classify": 1},
                                                      {"segment": 1, "classify": 1}]
    with pytest.raises(LimitsTooSmall) as caught:  # 2 classify calls at once cannot be shared by 3 workers
        shared_limits(limits.model_copy(update={"per_expert": {"classify": 2}}), 3, 2)
    assert caught.value.code == "limits_too_small_for_workers"


@pytest.mark.parametrize("executor, message", [
    ("{type: local, workers: 2}", "workers is a setting of executor types processes and ray"),
    ("{type: processes, address: auto}", "address is a setting of executor type ray"),
])
def test_executor_settings_of_another_type_are_refused(tmp_path: Path, executor: str, message: str) -> None:
    text = f"""name: s
graph: {{type: agent_loop, question: "q"}}
executor: {executor}
"""
    with pytest.raises(MedagentError) as caught:
        parse_study(text, str(tmp_path / "study.yaml"))
    assert message in str(caught.value)
