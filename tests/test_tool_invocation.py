"""One invocation path: an agent-loop call, a pipeline step and a dialogue hint each give the same record type
with the same fields, which the study store keeps as is; generic code reads declared label probabilities,
never one tool's output fields. Real Toolbox, real images, real LangGraph graphs; no torch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, tool_call
from medagent.api import Agent, AgentConfig
from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.errors import PreconditionFailed
from medagent.store import StudyStore
from medagent.studies.datasets import Case
from medagent.studies.dialogue_graph import DialogueGraph
from medagent.studies.dialogue_runner import DialogueCaseRunner
from medagent.studies.pipeline import PipelineGraph
from medagent.studies.pipeline_graph import PipelineRunner
from medagent.studies.runner import _columns
from medagent.tools import ImageId, Tool, ToolContext, ToolPolicy
from medagent.tools.builtin import Toolbox
from medagent.tools.invoke import ErrorRecord, ToolCallRecord
from medagent.yaml_located import StudyConfigError

pytestmark = pytest.mark.asyncio
FIELDS = set(ToolCallRecord.model_fields)


class ImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: ImageId


class PhraseInput(ImageInput):
    phrase: str


class Scores(BaseModel):
    """Not a classifier's shape: no ``findings`` list; it declares its labels through the contract."""

    scores: list[tuple[str, float]]

    def label_probabilities(self) -> dict[str, float]:
        return dict(self.scores)


class Echo(BaseModel):
    phrase: str


async def _score(arguments: ImageInput, context: ToolContext) -> Scores:
    context.load_image(arguments.image_id)
    return Scores(scores=[("Pneumonia", 0.9), ("Edema", 0.3), ("Nodule", 0.6)])


async def _refuse(arguments: ImageInput, context: ToolContext) -> Scores:
    raise PreconditionFailed("the test scorer refuses this image")


async def _echo(arguments: PhraseInput, context: ToolContext) -> Echo:
    return Echo(phrase=arguments.phrase)


def _tools() -> list[Tool[Any, Any]]:
    card = ModelCard(summary="test tool", modalities=None)
    policy = ToolPolicy(timeout_s=10)
    return [Tool(name="score_pneumonia", card=card, input_model=ImageInput, output_model=Scores, run=_score,
                 policy=policy),
            Tool(name="refusing_scorer", card=card, input_model=ImageInput, output_model=Scores, run=_refuse,
                 policy=policy),
            Tool(name="echo_phrase", card=card, input_model=PhraseInput, output_model=Echo, run=_echo, policy=policy)]


@pytest.fixture
def toolbox(settings: Settings) -> Iterator[Toolbox]:
    box = Toolbox(settings, tools=_tools(), plugins=False)
    yield box
    box.close()


def _same_record(record: object, tool: str, call_id: str, image_id: str) -> ToolCallRecord:
    """The one record type, every field set as the invocation path sets it, and kept whole by the store."""
    assert type(record) is ToolCallRecord
    assert isinstance(record, ToolCallRecord) and set(type(record).model_fields) == FIELDS
    assert (record.tool, record.call_id, record.arguments["image_id"]) == (tool, call_id, image_id)
    assert record.duration_s is not None and record.duration_s >= 0 and record.started_at is not None
    if record.ok:
        assert record.error is None and isinstance(record.output, dict)
    else:
        assert isinstance(record.error, ErrorRecord) and record.error.code == "precondition_failed"
        assert record.output is None
    return record


def _stored_as_is(settings: Settings, records: list[ToolCallRecord]) -> None:
    from medagent.store import CaseResult

    with StudyStore.open(None, settings.home) as store:
        store.create_run("run", "study", {}, "a" * 64)
        store.record_case("run", "case", 0, CaseResult(status="succeeded"), [], records)
        stored = [ToolCallRecord.model_validate(call.model_dump(include=FIELDS))
                  for call in store.tool_calls("run", "case", 0)]
    assert stored == records


async def test_an_agent_loop_call_gives_the_one_record(settings: Settings, nih_images: list[Path]) -> None:
    def script(request: PlannerRequest) -> Any:
        if any(m["role"] == "tool" for m in request.messages):
            return "done"
        image = request.tools[0]["function"]["parameters"]["properties"]["image_id"]["enum"][0]
        return [tool_call("score_pneumonia", {"image_id": image}, "c1"),
                tool_call("refusing_scorer", {"image_id": image}, "c2")]

    agent = await Agent(AgentConfig(checkpoint_url="memory://"), settings=settings, planner=ScriptedPlanner(script),
                        tools=_tools()).start()
    try:
        session = agent.session()
        image_id = (await session.attach(nih_images[0], "DX")).id
        answer = await session.ask("score it")
    finally:
        await agent.aclose()
    records = [ToolCallRecord.model_validate(call) for call in answer.tool_calls]  # the dumps, unchanged
    assert [call for call in answer.tool_calls] == [record.model_dump(mode="json") for record in records]
    _same_record(records[0], "score_pneumonia", "c1", image_id)
    _same_record(records[1], "refusing_scorer", "c2", image_id)
    _stored_as_is(settings, records)


async def test_a_pipeline_step_gives_the_one_record_and_for_each_follows_declared_labels(
        settings: Settings, toolbox: Toolbox, nih_images: list[Path]) -> None:
    graph = PipelineGraph.model_validate({"type": "pipeline", "steps": [
        {"id": "echo", "tool": "echo_phrase", "arguments": {"image_id": "{image}", "phrase": "first"}},
        {"id": "score", "tool": "score_pneumonia"},
        {"id": "explain", "tool": "echo_phrase", "for_each": {"findings_above": 0.5},
         "arguments": {"image_id": "{image}", "phrase": "{finding}"}},
        {"id": "refuse", "tool": "refusing_scorer", "optional": True,
         "when": {"finding_probability_at_least": {"step": "score", "finding": "pneumonia", "threshold": 0.8}}}]})
    image_id = toolbox.attach(nih_images[0], "DX").id
    outcome = await PipelineRunner(graph, toolbox).run(image_id, "case-1")
    assert outcome.status == "succeeded"
    # for_each defaulted to the earliest step whose tool declares label probabilities: 'score', not 'echo'
    assert outcome.outputs["explain"] == {"Pneumonia": {"phrase": "Pneumonia"}, "Nodule": {"phrase": "Nodule"}}
    ids = [record.call_id for record in outcome.tool_calls]
    assert ids == ["echo", "score", "explain:Pneumonia", "explain:Nodule", "refuse"]
    _same_record(outcome.tool_calls[1], "score_pneumonia", "score", image_id)
    _same_record(outcome.tool_calls[-1], "refusing_scorer", "refuse", image_id)
    _stored_as_is(settings, outcome.tool_calls)
    # a non-classifier tool that declares label probabilities feeds the report columns; other outputs do not
    case = Case(case_id="case-1", images=[nih_images[0]], labels={"Pneumonia": 1})
    columns = _columns(case, outcome.tool_calls, toolbox.registry)
    assert {key: value for key, value in columns.items() if key.startswith("prob.")} == {
        "prob.Pneumonia": 0.9, "prob.Edema": 0.3, "prob.Nodule": 0.6}


async def test_for_each_without_a_declaring_source_is_a_located_configuration_error(toolbox: Toolbox) -> None:
    for from_step in ({}, {"from_step": "echo"}):
        graph = PipelineGraph.model_validate({"type": "pipeline", "steps": [
            {"id": "echo", "tool": "echo_phrase", "arguments": {"image_id": "{image}", "phrase": "x"}},
            {"id": "again", "tool": "echo_phrase", "for_each": {"findings_above": 0.5, **from_step},
             "arguments": {"image_id": "{image}", "phrase": "{finding}"}}]})
        with pytest.raises(StudyConfigError, match="declares label probabilities") as caught:
            PipelineRunner(graph, toolbox)
        assert caught.value.details.get("field") == "graph.steps[1].for_each"


async def test_a_dialogue_hint_gives_the_one_record_and_ranks_declared_labels(
        settings: Settings, toolbox: Toolbox, nih_images: list[Path]) -> None:
    image_ids = [toolbox.attach(path, "DX").id for path in nih_images]
    for expert, ok in (("score_pneumonia", True), ("refusing_scorer", False)):
        graph = DialogueGraph(type="dialogue", strategy="dialogue_with_experts", expert=expert, top_k=2)
        runner = DialogueCaseRunner(graph, toolbox, label_set=None, modality="DX")  # type: ignore[arg-type]
        hints, calls = await runner._hints(image_ids)
        for record, image_id in zip(calls, image_ids, strict=True):
            assert _same_record(record, expert, f"hint:{image_id}", image_id).ok is ok
        assert [(hint.label, hint.probability) for hint in hints] == (
            [("Pneumonia", 0.9), ("Nodule", 0.6)] * 2 if ok else [])
    _stored_as_is(settings, calls)


async def test_invoke_bounds_what_it_keeps_and_types_every_failure(toolbox: Toolbox, nih_images: list[Path]) -> None:
    from medagent.tools.invoke import invoke

    context = toolbox.context([toolbox.attach(nih_images[0], "DX").id])
    broken = await invoke(toolbox.registry, "score_pneumonia", "[" + "x" * 5000, context, call_id="s:" + "F" * 500)
    record = broken.record
    assert (record.ok, record.error.code if record.error else None) == (False, "invalid_arguments")
    assert record.arguments == {"raw": ("[" + "x" * 5000)[:200], "characters": 5001}
    assert len(record.call_id or "") == 200 and ToolCallRecord.model_validate(record.as_json()) == record
    unknown = await invoke(toolbox.registry, "no_such_tool", {"image_id": context.image_ids[0]}, context)
    assert unknown.value is None and unknown.record.error is not None and unknown.record.error.family == "retry"
