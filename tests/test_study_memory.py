"""What a study run keeps in memory: no case's checkpoints once it is stored (a study of 100k cases would hold
them all), and the heap alive at its start out of the garbage collector's sight only while it runs."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import StudyRunner
from medagent.studies.scheduling import RUN_YOUNG_GC_THRESHOLD, heap_frozen
from tests.fake_openai_server import FakeOpenAIServer, status, text
from tests.study_files import write_manifest, write_study


def _threads(checkpointer: object) -> set[str]:
    return set(getattr(checkpointer, "storage", {}))


@pytest.mark.asyncio
async def test_a_stored_case_leaves_no_checkpoint_and_the_heap_is_frozen_only_during_the_run(
        tmp_path: Path, settings: Settings, nih_images: list[Path]) -> None:
    write_manifest(tmp_path, [(f"c{index}", nih_images[index % 2], index % 2, "MF"[index % 2]) for index in range(6)])
    with FakeOpenAIServer([text("No tool was needed.")]) as server:
        study = write_study(tmp_path, "  type: agent_loop\n  question: Describe the image.", concurrency=3)
        study.write_text(study.read_text().replace("graph:", f"planners:\n  planner: {{endpoint: '{server.url}', "
                                                            "model: fake-model, tool_calling: native}\ngraph:", 1))
        with StudyStore.open(None, settings.home) as store:
            runner = StudyRunner(load_study(study), store, settings)
            frozen_while_running: list[int] = []
            young_thresholds: list[int] = []
            before = gc.get_threshold()
            checkpointers: dict[int, object] = {}
            async for event in runner.run("memory"):
                frozen_while_running.append(gc.get_freeze_count())
                young_thresholds.append(gc.get_threshold()[0])
                checkpointers |= {id(agent): agent._graph.checkpointer for agent in runner._agents.values()}
            runner.toolbox.close()
            await runner.aclose()
            assert event.done == 6 and {case.status for case in store.cases("memory")} == {"succeeded"}
    assert len(server.chat_requests()) == 6 and checkpointers
    assert all(_threads(checkpointer) == set() for checkpointer in checkpointers.values())  # every case's deleted
    assert min(frozen_while_running) > 0 and gc.get_freeze_count() == 0
    assert set(young_thresholds) == {max(before[0], RUN_YOUNG_GC_THRESHOLD)} and gc.get_threshold() == before


@pytest.mark.asyncio
async def test_a_failed_case_leaves_no_checkpoint_either(tmp_path: Path, settings: Settings,
                                                        nih_images: list[Path]) -> None:
    write_manifest(tmp_path, [(f"c{index}", nih_images[0], 0, "M") for index in range(2)])
    with FakeOpenAIServer([status(400)]) as server:  # every question refused
        study = write_study(tmp_path, "  type: agent_loop\n  question: Describe the image.", concurrency=2)
        study.write_text(study.read_text().replace("graph:", f"planners:\n  planner: {{endpoint: '{server.url}', "
                                                            "model: fake-model, tool_calling: native}\ngraph:", 1))
        with StudyStore.open(None, settings.home) as store:
            runner = StudyRunner(load_study(study), store, settings)
            checkpointers: dict[int, object] = {}
            events = []
            async for event in runner.run("failing"):
                events.append(event)
                checkpointers |= {id(agent): agent._graph.checkpointer for agent in runner._agents.values()}
            runner.toolbox.close()
            await runner.aclose()
            assert events[-1].failed == 2
    assert checkpointers and all(_threads(checkpointer) == set() for checkpointer in checkpointers.values())


def test_overlapping_runs_give_the_collector_back_only_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    first, second = heap_frozen(), heap_frozen()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] == max(before[0], RUN_YOUNG_GC_THRESHOLD) and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
