"""Scratch sessions (one study case each) read nothing back from the checkpointer, yet answer and keep their
conversation as any session does (approvals: tests/test_agent_loop.py); a tool's readiness is looked up on disk at most once
per ``readiness_ttl_s`` while tools are offered."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, tool_call
from medagent.api import Agent, AgentConfig
from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.tools import ImageId, Tool, ToolContext, ToolPolicy


class NoteInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: ImageId


class Note(BaseModel):
    text: str


def _note_tool(name: str, *, approval: bool = False, ready: Any = None) -> Tool[NoteInput, Note]:
    async def run(arguments: NoteInput, context: ToolContext) -> Note:
        return Note(text="noted")

    return Tool(name=name, card=ModelCard(summary=f"{name} test tool"), input_model=NoteInput, output_model=Note,
                run=run, policy=ToolPolicy(requires_approval=approval, timeout_s=10),
                **({"ready": ready} if ready is not None else {}))


def _note_then_answer(tool: str) -> ScriptedPlanner:
    """Calls ``tool`` once per question, then answers with how many questions it has seen."""

    def script(request: PlannerRequest) -> object:
        since_question = request.messages[max(i for i, m in enumerate(request.messages) if m["role"] == "user"):]
        if any(m["role"] == "tool" for m in since_question):
            return f"answer {sum(m['role'] == 'user' for m in request.messages)}"
        return [tool_call(tool, {"image_id": request.image_ids()[0]}, "call-1")]

    return ScriptedPlanner(script)


class CountingReads:
    """Counts the agent graph's reads of stored state."""

    def __init__(self, agent: Agent) -> None:
        self.count = 0
        graph = agent._graph
        original = graph.aget_state

        async def aget_state(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        graph.aget_state = aget_state


@pytest.mark.asyncio
async def test_a_scratch_session_answers_keeps_its_conversation_and_reads_no_state(
        settings: Settings, nih_images: list[Path]) -> None:
    async with Agent(AgentConfig(checkpoint_url="memory://"), settings=settings,
                     planner=_note_then_answer("note")) as agent:
        agent.toolbox.registry.register(_note_tool("note"))
        reads = CountingReads(agent)
        session = agent.scratch_session()
        await session.attach(nih_images[0], "DX")
        first = await session.ask("First question?")
        second = await session.ask("Second question?")
        history = await session.history()
        assert reads.count == 0  # attach, both runs, the history: all from what the runs ended with
        assert (first.text, second.text) == ("answer 1", "answer 2")  # the second run saw the first
        assert [call["tool"] for call in second.tool_calls] == ["note"]  # this question's calls only
        assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"] * 2
        # what the session holds is what the checkpointer stored
        stored = (await agent._graph.aget_state({"configurable": {"thread_id": session.id}})).values
        assert stored["messages"] == history
        await session.delete()
        assert await session.history() == []
        assert not (await agent._graph.aget_state({"configurable": {"thread_id": session.id}})).values
        assert len(session.id) == 32 and session.id != agent.scratch_session().id


@pytest.mark.asyncio
async def test_a_tools_readiness_is_looked_up_once_per_ttl_while_offering(settings: Settings,
                                                                          nih_images: list[Path]) -> None:
    checks: list[bool] = []
    present = {"weights": False}

    def ready() -> bool:
        checks.append(present["weights"])
        return present["weights"]

    async with Agent(AgentConfig(checkpoint_url="memory://"), settings=settings,
                     planner=_note_then_answer("note")) as agent:
        toolbox = agent.toolbox
        toolbox.registry.register(_note_tool("weighted", ready=ready))
        image = (await agent.scratch_session().attach(nih_images[0], "DX")).id
        summaries = toolbox.image_summaries([image])
        toolbox.readiness_ttl_s = 3600.0
        offered = [toolbox.offered_tools(summaries) for _ in range(50)]
        assert len(checks) == 1 and all("weighted" not in names for names in offered)
        present["weights"] = True  # the file is put in place: seen once the check is older than the ttl
        assert "weighted" not in toolbox.offered_tools(summaries)
        toolbox.readiness_ttl_s = 0.0
        assert "weighted" in toolbox.offered_tools(summaries) and len(checks) == 2
        await asyncio.sleep(0)
        assert "weighted" in toolbox.offered_tools(summaries) and len(checks) == 3
