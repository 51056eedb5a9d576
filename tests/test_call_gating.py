"""Tool calls the human, the turn or the study did not allow never run: approvals by position, duplicate
ids, tools not offered, caps on counts and sizes. Real LangGraph graph and SQLite checkpointer throughout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, tool_call
from medagent.api import Agent, AgentConfig
from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.errors import PlannerMisbehaved
from medagent.imaging import Modality
from medagent.tools import ImageId, Tool, ToolContext, ToolPolicy
from medagent.workflows.agent_loop import LoopSettings


class TagInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: ImageId
    tag: str = Field(default="", max_length=16)
    note: str = Field(default="", max_length=200_000)


class Done(BaseModel):
    text: str


def _spy(name: str, ran: list[str], *, approval: bool = False, modalities: list[Modality] | None = None
         ) -> Tool[TagInput, Done]:
    """A tool that writes down every run (name:tag): the only proof that a call did or did not run."""

    async def run(arguments: TagInput, context: ToolContext) -> Done:
        ran.append(f"{name}:{arguments.tag}")
        return Done(text="ran")

    return Tool(name=name, card=ModelCard(summary=f"{name} test tool", modalities=modalities), input_model=TagInput,
                output_model=Done, run=run, policy=ToolPolicy(requires_approval=approval, timeout_s=10))


def _calls_then_answer(*turns: list[tuple[str, dict[str, object], str]]) -> ScriptedPlanner:
    """Turn i of each question: the calls (name, extra arguments, id) on the first attached image; then an
    answer."""

    def script(request: PlannerRequest) -> object:
        last_user = max(index for index, m in enumerate(request.messages) if m["role"] == "user")
        done = sum(1 for m in request.messages[last_user:] if m["role"] == "assistant" and m.get("tool_calls"))
        if done >= len(turns):
            return "done"
        image = _image_id(request)
        return [tool_call(name, {"image_id": image, **extra}, call_id) for name, extra, call_id in turns[done]]

    return ScriptedPlanner(script)


def _image_id(request: PlannerRequest) -> str:
    if request.image_ids():
        return request.image_ids()[0]
    content = str(request.messages[0]["content"])  # the system prompt lists attached ids
    return content.split("\n- ", 1)[1].split(":", 1)[0] if "\n- " in content else "img-000000000000"


async def _agent(settings: Settings, planner: ScriptedPlanner, tools: list[Tool[TagInput, Done]],
                 **loop: object) -> Agent:
    config = AgentConfig(checkpoint_url=str(settings.home / "sessions.sqlite"), loop=LoopSettings(**loop))
    agent = await Agent(config, settings=settings, planner=planner).start()
    for tool in tools:
        agent.toolbox.registry.register(tool)
    return agent


def _pairing(history: list[dict[str, object]]) -> None:
    """Every assistant tool call has a unique id, answered by exactly one tool message."""
    for index, message in enumerate(history):
        calls = message.get("tool_calls") if message["role"] == "assistant" else None
        if not calls:
            continue
        ids = [call["id"] for call in calls]  # type: ignore[index, union-attr]
        assert len(set(ids)) == len(ids), ids
        answers = [m["tool_call_id"] for m in history[index + 1: index + 1 + len(ids)]]
        assert answers == ids


# -- approvals: by position, whatever the planner's ids ------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("decisions", [(False, True), (True, False), (True, True), (False, False)])
@pytest.mark.parametrize("names", [("send_a", "send_b"), ("send_a", "send_a")])
async def test_two_same_id_calls_run_exactly_as_the_human_decided(
        settings: Settings, nih_images: list[Path], names: tuple[str, str], decisions: tuple[bool, bool]) -> None:
    ran: list[str] = []
    planner = _calls_then_answer([(names[0], {"tag": "first"}, "dup"), (names[1], {"tag": "second"}, "dup")])
    agent = await _agent(settings, planner, [_spy(name, ran, approval=True) for name in sorted(set(names))])
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        first = await session.ask("send both")
        assert first.pending_approval is not None and first.pending_approval["position"] == 0
        second = await session.approve(decisions[0])
        assert second.pending_approval is not None and second.pending_approval["position"] == 1
        assert second.pending_approval["call_id"] != first.pending_approval["call_id"]
        assert ran == []  # nothing runs before every decision is in
        answer = await session.approve(decisions[1])
        assert answer.text == "done"
        expected = [f"{name}:{tag}" for name, tag, approved in zip(names, ("first", "second"), decisions,
                                                                       strict=True) if approved]
        assert sorted(ran) == sorted(expected)
        records = sorted(answer.tool_calls, key=lambda record: record["arguments"]["tag"])
        assert [record["ok"] for record in records] == list(decisions)
        assert all(record["error"]["code"] == "approval_rejected" for record in records if not record["ok"])
        _pairing(await session.history())
    finally:
        await agent.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("order", [("free", "guarded"), ("guarded", "free")])
async def test_a_rejected_call_does_not_run_beside_a_free_call_with_its_id(
        settings: Settings, nih_images: list[Path], order: tuple[str, str]) -> None:
    """A rejected call never runs, whichever of the two same-id calls comes first in the turn."""
    ran: list[str] = []
    planner = _calls_then_answer([(name, {"tag": name}, "x") for name in order])
    agent = await _agent(settings, planner, [_spy("free", ran), _spy("guarded", ran, approval=True)])
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        paused = await session.ask("go")
        assert paused.pending_approval is not None and paused.pending_approval["tool"] == "guarded"
        assert paused.pending_approval["position"] == order.index("guarded")
        answer = await session.approve(False)
        assert answer.text == "done" and ran == ["free:free"]
        records = {record["tool"]: record for record in answer.tool_calls}
        assert records["free"]["ok"] is True
        assert records["guarded"]["ok"] is False and records["guarded"]["error"]["code"] == "approval_rejected"
        _pairing(await session.history())
    finally:
        await agent.aclose()


@pytest.mark.asyncio
async def test_unsafe_or_missing_ids_are_renamed_and_answered_consistently(settings: Settings,
                                                                           nih_images: list[Path]) -> None:
    ran: list[str] = []
    hostile = "id\n" + "x" * 10_000
    planner = _calls_then_answer([("t", {"tag": "a"}, hostile), ("t", {"tag": "b"}, hostile), ("t", {"tag": "c"}, "")])
    agent = await _agent(settings, planner, [_spy("t", ran)])
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert answer.text == "done" and sorted(ran) == ["t:a", "t:b", "t:c"]
        history = await session.history()
        _pairing(history)
        assert all(len(call["id"]) <= 64 for m in history for call in m.get("tool_calls") or [])
    finally:
        await agent.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("state", ["died_before_the_tools_ran", "answered", "new"])
async def test_an_approval_with_no_call_waiting_for_it_runs_nothing(settings: Settings, nih_images: list[Path],
                                                                   state: str) -> None:
    """approve() answers a shown request only: a run that died after the planner's step (its guarded call
    never shown to anyone), a finished question or a new session has none, and nothing runs."""
    from medagent.api import NoApprovalPending

    ran: list[str] = []
    planner = _calls_then_answer([("free", {"tag": "free"}, "c0")])
    agent = await _agent(settings, planner, [_spy("free", ran), _spy("guarded", ran, approval=True)])
    try:
        session = agent.session()
        image = (await session.attach(nih_images[0], "DX")).id
        if state == "answered":
            assert (await session.ask("go")).text == "done"
        elif state == "died_before_the_tools_ran":  # the checkpoint a process killed between the two nodes leaves
            graph, config = agent._graph, session._config
            await graph.aupdate_state(config, {"messages": [{"role": "user", "content": "go"}],
                                               "image_ids": [image]}, as_node="__start__")
            call = tool_call("guarded", {"image_id": image, "tag": "unseen"}, "c1").model_dump()
            step = {"role": "assistant", "content": "", "tool_calls": [
                {"id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": call["arguments"]}}]}
            await graph.aupdate_state(config, Command(update={"messages": [step], "steps": 1, "refusals": [None],
                                                              "offered": ["free", "guarded"]}, goto="tools"),
                                      as_node="planner")  # the planner node routes itself with a Command
            assert await session.unfinished()
        ran.clear()
        with pytest.raises(NoApprovalPending) as caught:
            await session.approve(True)
        assert caught.value.family == "configuration" and ran == []
        if state == "died_before_the_tools_ran":  # the run still completes the ordinary way: the human is asked
            paused = await session.finish()
            assert paused.pending_approval is not None and paused.pending_approval["tool"] == "guarded"
            assert ran == []
    finally:
        await agent.aclose()


# -- tools not offered never run -------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("why", ["not_allowed", "unsuited_image", "no_image"])
async def test_a_tool_that_was_not_offered_never_runs(settings: Settings, nih_images: list[Path], why: str) -> None:
    ran: list[str] = []
    spy = _spy("spy", ran, modalities=[Modality.CT] if why == "unsuited_image" else None)
    loop = {"allowed_tools": ["assess_image_quality"]} if why == "not_allowed" else {}
    planner = _calls_then_answer([("spy", {"tag": "x"}, "c1")])
    agent = await _agent(settings, planner, [spy], **loop)
    try:
        session = agent.session()
        if why != "no_image":
            await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert answer.text == "done" and ran == []
        assert "spy" not in planner.requests[0].tool_names
        (record,) = answer.tool_calls
        assert record["ok"] is False and record["error"]["code"] == "tool_not_offered"
        assert record["error"]["family"] == "retry"
        tool_message = next(m for m in planner.requests[1].messages if m["role"] == "tool")
        assert "not offered" in tool_message["content"]
    finally:
        await agent.aclose()


@pytest.mark.asyncio
async def test_allowed_tools_limit_what_is_offered(settings: Settings, nih_images: list[Path]) -> None:
    ran: list[str] = []
    planner = _calls_then_answer([("spy", {"tag": "x"}, "c1")])
    agent = await _agent(settings, planner, [_spy("spy", ran)], allowed_tools=["spy"])
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert planner.requests[0].tool_names == ["spy"] and ran == ["spy:x"] and answer.text == "done"
    finally:
        await agent.aclose()


@pytest.mark.asyncio
async def test_a_studys_experts_are_enforced_when_the_planner_calls(tmp_path: Path, settings: Settings,
                                                                    nih_images: list[Path]) -> None:
    from medagent.store import StudyStore
    from medagent.studies import load_study
    from medagent.studies.runner import StudyRunner
    from medagent.tools.builtin import Toolbox
    from tests.study_files import SCRIPTED, agent_loop, write_manifest, write_study

    write_manifest(tmp_path, [("a", nih_images[0], 1, "M")])
    planner = SCRIPTED % ("spy, assess_image_quality", ", ignore_offer: true")
    study = write_study(tmp_path, agent_loop("Is this image usable?"), planner=planner)
    study.write_text(study.read_text().replace("graph:", "experts: [assess_image_quality]\ngraph:", 1))
    ran: list[str] = []
    toolbox = Toolbox(settings)
    toolbox.registry.register(_spy("spy", ran))
    with StudyStore.open(None, settings.home) as store:
        runner = StudyRunner(load_study(study), store, settings, toolbox=toolbox)
        events = [event async for event in runner.run("experts")]
        toolbox.close()
        assert events[-1].done == 1 and ran == []
        spy_call, quality_call = store.tool_calls("experts", "a", 0)
        assert spy_call.tool == "spy" and not spy_call.ok and spy_call.error is not None
        assert spy_call.error.code == "tool_not_offered"
        assert quality_call.tool == "assess_image_quality" and quality_call.ok


# -- caps ------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(("loop", "ran_count"), [({}, 5), ({"max_calls_per_turn": 3, "max_invalid_calls": 5}, 3)])
async def test_calls_per_turn_past_the_cap_are_refused(settings: Settings, nih_images: list[Path],
                                                       loop: dict[str, int], ran_count: int) -> None:
    ran: list[str] = []
    planner = _calls_then_answer([("t", {"tag": str(index)}, f"c{index}") for index in range(5)])
    agent = await _agent(settings, planner, [_spy("t", ran)], **loop)
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert ran == [f"t:{index}" for index in range(ran_count)]
        refused = [record for record in answer.tool_calls if not record["ok"]]
        assert len(refused) == 5 - ran_count
        assert all(record["error"]["code"] == "too_many_tool_calls" for record in refused)
    finally:
        await agent.aclose()


@pytest.mark.asyncio
async def test_five_hundred_calls_in_a_turn_end_the_question_before_any_runs(settings: Settings,
                                                                             nih_images: list[Path]) -> None:
    ran: list[str] = []
    planner = _calls_then_answer([("t", {"tag": str(index)}, f"c{index}") for index in range(500)])
    agent = await _agent(settings, planner, [_spy("t", ran)])
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        with pytest.raises(PlannerMisbehaved, match="invalid tool calls"):
            await session.ask("go")
        assert ran == []
    finally:
        await agent.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(("loop", "ran_count"), [({}, 6), ({"max_calls_per_question": 4}, 4)])
async def test_calls_per_question_past_the_cap_are_refused(settings: Settings, nih_images: list[Path],
                                                           loop: dict[str, int], ran_count: int) -> None:
    ran: list[str] = []
    turn = [("t", {"tag": f"{step}{index}"}, f"c{index}") for step in "ab" for index in range(3)]
    planner = _calls_then_answer(turn[:3], turn[3:])
    agent = await _agent(settings, planner, [_spy("t", ran)], **loop)
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert answer.text == "done" and len(ran) == ran_count
        # the budget is per question: the next question gets it whole
        ran.clear()
        await session.ask("again")
        assert len(ran) == ran_count
    finally:
        await agent.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(("loop", "runs"), [({}, True), ({"max_tool_name_chars": 32}, False)])
async def test_tool_names_past_the_cap_are_neither_offered_nor_run(settings: Settings, nih_images: list[Path],
                                                                   loop: dict[str, int], runs: bool) -> None:
    ran: list[str] = []
    long_name = "n" * 40
    planner = _calls_then_answer([(long_name, {"tag": "x"}, "c1"), ("z" * 100_000, {}, "c2")])
    agent = await _agent(settings, planner, [_spy(long_name, ran)], max_invalid_calls=5, **loop)
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert (ran == [f"{long_name}:x"]) is runs and (long_name in planner.requests[0].tool_names) is runs
        huge = answer.tool_calls[1]
        assert huge["error"]["code"] == "tool_not_offered" and len(json.dumps(huge)) < 2_000
        assert len(json.dumps(planner.requests[1].messages)) < 20_000
    finally:
        await agent.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(("loop", "runs"), [({}, True), ({"max_argument_bytes": 1024}, False)])
async def test_arguments_past_the_size_cap_are_refused(settings: Settings, nih_images: list[Path],
                                                       loop: dict[str, int], runs: bool) -> None:
    ran: list[str] = []
    planner = _calls_then_answer([("t", {"tag": "x", "note": "n" * 2000}, "c1")])
    agent = await _agent(settings, planner, [_spy("t", ran)], **loop)
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert (ran == ["t:x"]) is runs
        if not runs:
            assert answer.tool_calls[0]["error"]["code"] == "arguments_too_large"
    finally:
        await agent.aclose()


@pytest.mark.asyncio
async def test_a_ten_megabyte_argument_reaches_neither_the_next_request_nor_the_checkpoint(
        settings: Settings, nih_images: list[Path]) -> None:
    ran: list[str] = []
    marker = "Q" * 10_000_000
    planner = _calls_then_answer([("t", {"tag": "x", "note": marker}, "c1")])
    agent = await _agent(settings, planner, [_spy("t", ran)])
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert answer.text == "done" and ran == []
        assert answer.tool_calls[0]["error"]["code"] == "arguments_too_large"
        assert len(json.dumps(planner.requests[1].messages)) < 20_000
    finally:
        await agent.aclose()
    stored = b"".join(path.read_bytes() for path in settings.home.glob("sessions.sqlite*"))
    assert b"Q" * 1000 not in stored


@pytest.mark.asyncio
@pytest.mark.parametrize("echo", [200, 1000])
async def test_invalid_arguments_are_echoed_only_up_to_the_cap(settings: Settings, nih_images: list[Path],
                                                               echo: int) -> None:
    ran: list[str] = []
    planner = _calls_then_answer([("t", {"tag": "y" * 5000}, "c1"), ("t", {"k" * 5000: 1}, "c2")])
    agent = await _agent(settings, planner, [_spy("t", ran)], max_echo_chars=echo)
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert ran == [] and answer.text == "done"
        assistant = next(m for m in planner.requests[1].messages if m.get("tool_calls"))
        for call in assistant["tool_calls"]:  # cut, yet JSON: servers may parse earlier calls' arguments
            assert echo < len(call["function"]["arguments"]) <= echo + 80
            assert json.loads(call["function"]["arguments"])["characters"] > 5000
        for record in answer.tool_calls:
            assert len(json.dumps(record["arguments"])) <= echo + 80 and record["error"]["code"] == "invalid_arguments"
            assert "k" * 100 not in record["error"]["message"]
        assert all(len(m["content"]) < 600 for m in planner.requests[1].messages if m["role"] == "tool")
    finally:
        await agent.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("nested", ["[" * 1500 + "]" * 1500, "[" * 3000, '{"a":' * 2000 + "1" + "}" * 2000])
@pytest.mark.parametrize("echo", [200, 4096])
async def test_arguments_nested_past_the_parser_are_an_invalid_call(settings: Settings, nih_images: list[Path],
                                                                    nested: str, echo: int) -> None:
    """Refused, and kept in the history as arguments every reader (a server, the study store) can parse."""
    ran: list[str] = []
    planner = ScriptedPlanner(lambda request: "done" if any(m["role"] == "tool" for m in request.messages) else
                              [tool_call("t", f'{{"image_id": "{_image_id(request)}", "tag": {nested}}}', "c1")])
    agent = await _agent(settings, planner, [_spy("t", ran)], max_echo_chars=echo)
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        answer = await session.ask("go")
        assert answer.text == "done" and ran == []
        assert answer.tool_calls[0]["error"]["code"] == "invalid_arguments"
        assistant = next(m for m in planner.requests[1].messages if m.get("tool_calls"))
        kept = assistant["tool_calls"][0]["function"]["arguments"]
        assert isinstance(json.loads(kept), dict) and answer.tool_calls[0]["arguments"] == json.loads(kept)
    finally:
        await agent.aclose()


def test_every_cap_has_an_upper_bound() -> None:
    for field, value in [("max_steps", 1000), ("max_invalid_calls", 1000), ("max_calls_per_turn", 1000),
                         ("max_calls_per_question", 10_000), ("max_tool_name_chars", 10_000),
                         ("max_argument_bytes", 10**9), ("max_echo_chars", 10**6)]:
        with pytest.raises(ValidationError):
            LoopSettings.model_validate({field: value})


@pytest.mark.asyncio
@pytest.mark.parametrize("answers", [("n", "y"), ("yes", "N"), ("y", "y"), ("", "no")])
async def test_the_chat_asks_once_per_guarded_call_and_runs_only_what_was_approved(
        settings: Settings, nih_images: list[Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], answers: tuple[str, str]) -> None:
    from medagent.cli import chat as chat_cli

    prompts: list[str] = []
    replies = list(answers)

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        return replies.pop(0)

    monkeypatch.setattr("builtins.input", fake_input)
    ran: list[str] = []
    planner = _calls_then_answer([("send_a", {"tag": "first"}, "dup"), ("send_b", {"tag": "second"}, "dup")])
    agent = await _agent(settings, planner, [_spy("send_a", ran, approval=True), _spy("send_b", ran, approval=True)])
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        await chat_cli._turn(chat_cli.Screen(agent, chat_cli.console, chat_cli.errors), session, "send both")
    finally:
        await agent.aclose()
    assert len(prompts) == 2 and replies == []
    assert prompts[0].startswith("approve send_a ") and '"first"' in prompts[0] and prompts[0].endswith("? [y/N] ")
    assert prompts[1].startswith("approve send_b ") and '"second"' in prompts[1]
    approved = [answer.strip().lower() in ("y", "yes") for answer in answers]
    assert ran == [name for name, ok in zip(("send_a:first", "send_b:second"), approved, strict=True) if ok]
    shown = capsys.readouterr().out
    assert "done" in shown
    for name, ok in zip(("send_a", "send_b"), approved, strict=True):  # the evidence block says what was refused
        assert (f"{name}: approval_rejected" in shown) is not ok


def test_a_study_names_its_tools_once_in_experts(tmp_path: Path) -> None:
    from medagent.studies import load_study
    from medagent.yaml_located import StudyConfigError
    from tests.study_files import write_study

    graph = "  type: agent_loop\n  question: q\n  loop: {max_calls_per_turn: 2, allowed_tools: [read_dicom_header]}"
    with pytest.raises(StudyConfigError, match="experts"):
        load_study(write_study(tmp_path, graph))
    config = load_study(write_study(tmp_path, "  type: agent_loop\n  question: q\n  loop: {max_calls_per_turn: 2}"))
    assert config.graph.loop.max_calls_per_turn == 2  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_a_question_that_ended_in_an_error_leaves_the_next_its_whole_budget(settings: Settings,
                                                                                 nih_images: list[Path]) -> None:
    ran: list[str] = []

    def script(request: PlannerRequest) -> object:
        last_user = max(index for index, m in enumerate(request.messages) if m["role"] == "user")
        question = request.messages[last_user]["content"]
        turns = sum(1 for m in request.messages[last_user:] if m.get("tool_calls"))
        image = _image_id(request)
        if question == "first" and turns == 0:
            return [tool_call("t", {"image_id": image, "tag": f"a{i}"}, f"a{i}") for i in range(3)]
        if question == "first":  # then far too many calls: the question ends in PlannerMisbehaved
            return [tool_call("t", {"image_id": image, "tag": f"b{i}"}, f"b{i}") for i in range(50)]
        if turns == 0:
            return [tool_call("t", {"image_id": image, "tag": f"c{i}"}, f"c{i}") for i in range(3)]
        return "done"

    agent = await _agent(settings, ScriptedPlanner(script), [_spy("t", ran)], max_calls_per_question=4,
                         max_steps=3)
    try:
        session = agent.session()
        await session.attach(nih_images[0], "DX")
        with pytest.raises(PlannerMisbehaved):
            await session.ask("first")
        ran.clear()
        answer = await session.ask("second")
        assert answer.text == "done" and ran == ["t:c0", "t:c1", "t:c2"]
    finally:
        await agent.aclose()
