"""One session asked twice at once, one run resumed twice at once: nothing lost, nothing computed twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.api import Agent, AgentConfig
from medagent.config import Settings
from medagent.store import RunInProgress, StudyStore
from medagent.store.leases import new_owner, this_host
from medagent.studies import load_study
from medagent.studies.runner import StudyRunner
from tests.conftest import TEST_SECRET
from tests.dicom_files import cr_dicom
from tests.study_files import SCRIPTED, agent_loop, variants, write_manifest, write_study

HASH = "c" * 64


# -- two asks on one session id -----------------------------------------------------------------------------


def _echo_planner() -> ScriptedPlanner:
    """Reads the image's header once per question, slowly, then answers naming the question it answers."""

    async def script(request: PlannerRequest) -> ScriptResult:
        await asyncio.sleep(0.2)  # both questions are in flight at once
        question = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
        since_question = request.messages[max(i for i, m in enumerate(request.messages) if m["role"] == "user"):]
        if not any(m["role"] == "tool" for m in since_question):
            return [tool_call("read_dicom_header", {"image_id": request.image_ids()[0]},
                              call_id=f"call_{uuid.uuid4().hex[:6]}")]
        return f"answer to: {question}"

    return ScriptedPlanner(script)


@pytest.mark.asyncio
@pytest.mark.parametrize("same_object", [True, False], ids=["one-session-object", "two-session-objects"])
async def test_two_concurrent_asks_on_one_session_each_get_their_own_answer_and_trace(
        settings: Settings, nih_images: list[Path], tmp_path: Path, same_object: bool) -> None:
    dicom = cr_dicom(nih_images[0], tmp_path / "chest.dcm")
    async with Agent(AgentConfig(checkpoint_url=str(tmp_path / "sessions.sqlite")), settings=settings,
                     planner=_echo_planner()) as agent:
        first = agent.session("shared")
        await first.attach(dicom)
        await first.ask("warm up")  # the image is part of the conversation now
        second = first if same_object else agent.session("shared")
        questions = ["Is the view PA?", "What is the body part?"]
        answers = await asyncio.gather(first.ask(questions[0]), second.ask(questions[1]))
        history = await first.history()
    for question, answer in zip(questions, answers, strict=True):
        assert answer.text == f"answer to: {question}"  # its own answer, not the other caller's
        assert [call["tool"] for call in answer.tool_calls] == ["read_dicom_header"]  # its own trace only
        assert answer.tool_calls[0]["ok"]
    asked = [m["content"] for m in history if m["role"] == "user"]
    assert asked[1:] in (questions, questions[::-1]) and len(asked) == 3  # neither question was lost
    ids = [call["call_id"] for answer in answers for call in answer.tool_calls]
    assert len(set(ids)) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["../other", "a/b", ".hidden", "x" * 129, "a b", "[/]"])
async def test_an_unsafe_session_id_is_refused(settings: Settings, tmp_path: Path, bad: str) -> None:
    from medagent.errors import InvalidName

    async with Agent(AgentConfig(checkpoint_url=str(tmp_path / "s.sqlite")), settings=settings,
                     planner=_echo_planner()) as agent:
        with pytest.raises(InvalidName) as caught:
            agent.session(bad)
        assert bad not in caught.value.message


# -- run leases ----------------------------------------------------------------------------------------------


@pytest.fixture
def store(request: pytest.FixtureRequest, store_url: str | None, tmp_path: Path) -> StudyStore:
    url = store_url
    opened = StudyStore.open(url, tmp_path / "home")
    request.addfinalizer(opened.close)
    return opened


def test_a_run_lease_refuses_a_second_live_runner_until_released_or_expired(store: StudyStore) -> None:
    first, second = (f"{os.uname().nodename}:{os.getpid()}:{name}" for name in ("first", "second"))
    store.create_run("r", "study", {}, HASH, lease_owner=first)
    with pytest.raises(RunInProgress) as caught:  # a live runner (this very process) holds it
        store.resume_run("r", {}, HASH, lease_owner=second)
    assert caught.value.code == "run_in_progress" and caught.value.family == "configuration"
    assert store.get_run("r").config_hash == HASH  # type: ignore[union-attr]  # the refused resume changed nothing
    store.release_lease("r", first)
    store.resume_run("r", {}, HASH, lease_owner="other-host:5:x", lease_ttl_s=0.3)
    with pytest.raises(RunInProgress):  # another host's runner: only its expiry frees the run
        store.resume_run("r", {}, HASH, lease_owner=second)
    time.sleep(0.5)
    store.resume_run("r", {}, HASH, lease_owner=second)  # expired: taken over
    with pytest.raises(RunInProgress):  # the old holder learns it lost the run when it next refreshes
        store.renew_lease("r", "other-host:5:x")
    store.renew_lease("r", second)


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(store: StudyStore) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = f"{this_host()}:{int(finished.stdout)}:gone"
    store.create_run("r", "study", {}, HASH, lease_owner=dead, lease_ttl_s=3600)
    store.resume_run("r", {}, HASH, lease_owner=f"{this_host()}:{os.getpid()}:me")  # kill, then resume


def test_a_lease_of_another_pid_namespace_on_this_host_name_waits_for_its_expiry(
        store: StudyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two containers with host networking share the host name, not their pids: a pid that does not exist here
    may be a live runner there, so its lease is not taken over before it expires."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    with monkeypatch.context() as there:  # the owner a runner in another PID namespace writes
        there.setattr(os, "readlink", lambda path: "pid:[1]" if str(path) == "/proc/self/ns/pid" else path)
        there.setattr(os, "getpid", lambda: int(finished.stdout))  # a pid that does not exist here
        elsewhere = new_owner()
    store.create_run("r", "study", {}, HASH, lease_owner=elsewhere, lease_ttl_s=3600)
    with pytest.raises(RunInProgress):
        store.resume_run("r", {}, HASH, lease_owner=new_owner())


@pytest.mark.asyncio
async def test_two_concurrent_resumes_of_one_run_compute_each_case_once(
        settings: Settings, nih_images: list[Path], tmp_path: Path) -> None:
    images = variants(nih_images[0], tmp_path, 6)
    write_manifest(tmp_path, [(f"case-{i}", path, 1, "M") for i, path in enumerate(images)])
    config = load_study(write_study(tmp_path, agent_loop("Is this image usable?"), concurrency=1,
                                    planner=SCRIPTED % ("", ", latency_s: 0.1")))
    with StudyStore.open(None, settings.home) as store:
        first = [e async for e in StudyRunner(config, store, settings).run("r", limit=1)]
        assert first[-1].kind == "finished"

        async def resume() -> list[str]:
            return [e.kind async for e in StudyRunner(config, store, settings).run("r", resume=True)]

        outcomes = await asyncio.gather(resume(), resume(), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, RunInProgress)]
        completed = [o for o in outcomes if isinstance(o, list)]
        assert len(refused) == 1 and len(completed) == 1, outcomes
        assert completed[0][-1] == "finished"
        cases = store.cases("r")
        assert sorted(c.case_id for c in cases) == [f"case-{i}" for i in range(6)]
        assert all(c.attempts == 1 and c.status == "succeeded" for c in cases)
        assert store.get_run("r").status == "finished"  # type: ignore[union-attr]
        # the finished runner released the lease: a later resume is not refused
        again = [e async for e in StudyRunner(config, store, settings).run("r", resume=True)]
        assert again[0].skipped == 6


def test_two_concurrent_cli_resumes_of_one_run(tmp_path: Path, nih_images: list[Path]) -> None:
    """As a user would: two terminals run ``medagent run --resume`` of one run; the planner log shows each
    remaining image planned once, and the refused one says why."""
    home = tmp_path / "home"
    images = variants(nih_images[0], tmp_path, 6)
    write_manifest(tmp_path, [(f"case-{i}", path, 1, "M") for i, path in enumerate(images)])
    study = write_study(tmp_path, agent_loop("Is this image usable?"), concurrency=1,
                        planner=SCRIPTED % ("", ", latency_s: 0.3, call_log: calls.log"))
    environment = {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   "COLUMNS": "250"}
    command = [sys.executable, "-m", "medagent.cli", "run", str(study)]
    subprocess.run([*command, "--run-id", "r", "--limit", "1"], env=environment, check=True, capture_output=True,
                   timeout=300)
    processes = [subprocess.Popen([*command, "--resume", "r"], env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert re.search(r"^error \[run_in_progress\] run 'r' is being computed by another runner", refused, re.M)
    assert "Traceback" not in refused
    calls = Counter((home / "logs" / "calls.log").read_text().splitlines())
    assert len(calls) == 6 and set(calls.values()) == {1}  # every image planned once, across both processes
    with StudyStore.open(None, home) as store:
        assert all(case.attempts == 1 for case in store.cases("r")) and len(store.cases("r")) == 6


@pytest.mark.asyncio
async def test_a_runner_that_loses_its_lease_stops_instead_of_computing_on(
        settings: Settings, nih_images: list[Path], tmp_path: Path) -> None:
    """Another runner took the run over (e.g. this one stalled past its lease): this one stops, typed."""
    import sqlite3

    images = variants(nih_images[0], tmp_path, 6)
    write_manifest(tmp_path, [(f"case-{i}", path, 1, "M") for i, path in enumerate(images)])
    config = load_study(write_study(tmp_path, agent_loop("Is this image usable?"), concurrency=1,
                                    planner=SCRIPTED % ("", ", latency_s: 0.2")))
    with StudyStore.open(None, settings.home) as store:
        runner = StudyRunner(config, store, settings, lease_ttl_s=0.4)  # refreshed every 0.1 s
        seen: list[str] = []
        with pytest.raises(RunInProgress):
            async for event in runner.run("r"):
                seen.append(event.kind)
                if event.kind == "case" and seen.count("case") == 1:
                    with sqlite3.connect(settings.home / "studies.sqlite") as connection:
                        connection.execute("UPDATE study_run_leases SET owner = 'other-host:1:x' WHERE run_id = 'r'")
                    connection.close()
        assert seen.count("case") < 6 and "finished" not in seen
        assert store.get_run("r").status == "running"  # type: ignore[union-attr]  # the other runner's to finish


@pytest.mark.asyncio
@pytest.mark.parametrize("stop", ["consumer-stops", "lease-lost"])
async def test_a_runner_that_stops_leaves_no_case_computing_behind(
        settings: Settings, nih_images: list[Path], tmp_path: Path, stop: str) -> None:
    """Once a runner stops (its caller stops reading, or its lease is taken over) and has released the run, none
    of its cases goes on computing or writing: a runner resuming the run is the only one working on it."""
    import sqlite3

    images = variants(nih_images[0], tmp_path, 8)
    write_manifest(tmp_path, [(f"case-{i}", path, 1, "M") for i, path in enumerate(images)])
    config = load_study(write_study(tmp_path, agent_loop("Is this image usable?"), concurrency=2,
                                    planner=SCRIPTED % ("", ", latency_s: 0.2")))
    with StudyStore.open(None, settings.home) as store:
        runner = StudyRunner(config, store, settings, lease_ttl_s=0.4)
        # aclosing: a caller that stops reading closes the run, which cancels its cases and ends its writes
        with pytest.raises(RunInProgress) if stop == "lease-lost" else contextlib.nullcontext():
            async with contextlib.aclosing(runner.run("r")) as events:
                async for event in events:
                    if event.kind != "case":
                        continue
                    if stop == "consumer-stops":
                        break
                    with sqlite3.connect(settings.home / "studies.sqlite") as connection:
                        connection.execute("UPDATE study_run_leases SET owner = 'other-host:1:x' WHERE run_id = 'r'")
                    connection.close()
        await asyncio.sleep(0)
        written = len(store.cases("r"))
        await asyncio.sleep(1.5)  # several cases' time: an orphaned case would have been written by now
        assert len(store.cases("r")) == written, "a case went on after its runner stopped"
        assert written < 8
