"""For the OpenAI facade's tests: ``medagent serve`` on uvicorn (127.0.0.1) with a scripted planner that calls the
outline expert on the first image (or the tool the question names) and then answers a known sentence, or a
letter where a harness's multiple-choice template asks for one; and images as data URLs."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import uvicorn

from medagent.agents.planner import PlannerConfig
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner, ScriptResult, tool_call
from medagent.service.app import create_app
from medagent.service.settings import ServiceSettings
from tests.service_parts import TOOLS, Served, library_settings

ANSWER = "The cardiac silhouette is enlarged, consistent with cardiomegaly."
CHOICE_TEMPLATE = "ANSWER: $LETTER"  # inspect-ai's multiple-choice template asks for this line


def _question(request: PlannerRequest) -> tuple[int, str]:
    for index in range(len(request.messages) - 1, -1, -1):
        if request.messages[index]["role"] == "user":
            return index, str(request.messages[index].get("content") or "")
    return 0, ""


def script(request: PlannerRequest) -> ScriptResult:
    start, question = _question(request)
    called = {call["function"]["name"] for message in request.messages[start:]
              for call in message.get("tool_calls") or []}
    wanted = "send_report" if "send_report" in question else "outline_image"
    images = request.image_ids()
    if images and wanted in request.tool_names and wanted not in called:
        return [tool_call(wanted, {"image_id": images[0]}, call_id=f"call_{wanted}")]
    if CHOICE_TEMPLATE in question:
        return "ANSWER: A"
    return ANSWER


def planner() -> ScriptedPlanner:
    return ScriptedPlanner(script, model="scripted:facade-test")


class FacadeServed(Served):
    """:class:`Served` with the scripted planner above (its requests in ``self.planner.requests``)."""

    def __init__(self, home: Path, **overrides: Any) -> None:
        super().__init__(home, **overrides)
        self.planner = planner()
        settings = ServiceSettings(planner=PlannerConfig(backend="scripted"), shutdown_grace_s=10, **overrides)
        app = create_app(settings, library_settings=library_settings(home), tools=TOOLS, planner=self.planner)
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)


def data_url(path: Path, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"
