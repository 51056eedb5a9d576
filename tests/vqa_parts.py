"""Planners for VQA study tests, named from study YAML by ``_target_``: they answer benchmark questions
deterministically and keep every request, so tests can see exactly what each question was shown."""

from __future__ import annotations

import json
from typing import Any

from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.errors import PlannerRejected

PLANNERS: list[ScriptedPlanner] = []


def _question_text(request: PlannerRequest) -> str:
    users = [m["content"] for m in request.messages if m["role"] == "user"]
    last = users[-1] if users else ""
    return last if isinstance(last, str) else " ".join(part.get("text", "") for part in last if isinstance(part, dict))


def answering_planner(config: PlannerConfig, *, answers: dict[str, str] | None = None, default: str = "A",
                      refuse_schema: bool = False, tools: list[str] | None = None,
                      free_text: str = "The answer is {letter}.") -> ScriptedPlanner:
    """Answers with the letter ``answers`` maps a word of the question to (else ``default``): as JSON when a
    schema is asked for, else as ``free_text``. ``refuse_schema``: its 'server' refuses structured output, as a
    server without guided decoding does. ``tools``: in the agent loop, calls these first (one each)."""
    wanted = list(tools or [])

    def script(request: PlannerRequest) -> ScriptResult:
        if request.response_schema is not None and refuse_schema:
            raise PlannerRejected("planner server rejected the request (400): response_format is not supported")
        done = sum(1 for message in request.messages if message["role"] == "tool")
        if request.tools and done < len(wanted) and wanted[done] in request.tool_names and request.image_ids():
            return [tool_call(wanted[done], {"image_id": request.image_ids()[0]}, call_id=f"call_{done}")]
        text = _question_text(request)
        letter = next((answer for word, answer in (answers or {}).items() if word in text), default)
        if request.response_schema is not None:
            return json.dumps({"answer": letter})
        return free_text.format(letter=letter)

    planner = ScriptedPlanner(script, model="scripted:vqa", config=config)
    PLANNERS.append(planner)
    return planner


def shown(planner: ScriptedPlanner) -> list[str]:
    """Everything each request showed the planner, as one text per request."""
    return [json.dumps(request.messages, default=str) for request in planner.requests]


def requests_about(text: str) -> list[Any]:
    return [request for planner in PLANNERS for request in planner.requests
            if text in json.dumps(request.messages, default=str)]


def judging_planner(config: PlannerConfig, *, correct_when: str, malformed: bool = False) -> ScriptedPlanner:
    """A judge: 'correct' when the answer given contains ``correct_when``; ``malformed``: never a valid verdict."""

    def script(request: PlannerRequest) -> ScriptResult:
        if malformed:
            return "I think it is fine."
        given = json.loads(request.messages[-1]["content"].split("```json\n", 1)[1].split("\n```", 1)[0])
        verdict = "correct" if correct_when in given["answer_given"] else "incorrect"
        return json.dumps({"verdict": verdict, "reason": "compared with the gold answer"})

    planner = ScriptedPlanner(script, model="scripted:judge", config=config)
    PLANNERS.append(planner)
    return planner
