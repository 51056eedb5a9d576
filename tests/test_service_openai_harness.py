"""Third-party code that speaks OpenAI, unmodified, against the facade of ``medagent serve`` (real uvicorn,
127.0.0.1): the evaluation framework inspect-ai scores a multiple-choice question about a real chest X-ray with
medagent as its model, and the README's openai-client example runs as printed."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.openai_parts import ANSWER, FacadeServed
from tests.service_parts import new_key
from tests.test_readme_snippet import snippet

pytestmark = pytest.mark.timeout(120)
OPENAI_MARKER = "<!-- snippet: service-openai -->"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FacadeServed]:
    with FacadeServed(tmp_path_factory.mktemp("harness-home")) as running:
        yield running


# inspect-ai's own code: its retry policy passes tenacity a parameter the installed tenacity calls deprecated, and
# its sample-event emitter leaves a memory stream for the garbage collector to close
@pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObjectReceiveStream:ResourceWarning")
def test_inspect_ai_scores_a_chest_xray_multiple_choice_question_with_medagent_as_its_model(
        served: FacadeServed, nih_images: list[Path], tmp_path: Path) -> None:
    """inspect-ai's own multiple_choice solver and choice scorer, its OpenAI-compatible provider pointed at the
    service: it sends the image (as a data URL), gets medagent's answer and scores it."""
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ChatMessageUser, ContentImage, ContentText
    from inspect_ai.scorer import choice
    from inspect_ai.solver import multiple_choice

    key = new_key(served.home, "inspect")
    sample = Sample(input=[ChatMessageUser(content=[ContentText(text="What does this chest radiograph show?"),
                                                    ContentImage(image=str(nih_images[0]))])],
                    choices=["Cardiomegaly", "No finding"], target="A")
    calls_before = len(served.planner.requests)
    (log,) = inspect_eval(Task(dataset=[sample], solver=multiple_choice(), scorer=choice()),
                          model="openai-api/medagent/medagent", model_base_url=f"{served.url}/v1",
                          model_args={"api_key": key}, log_dir=str(tmp_path / "logs"), display="none",
                          max_retries=0)
    gc.collect()  # inspect-ai's leftovers go while the filters above hold
    assert log.status == "success", log.error
    (scored,) = log.samples or []
    assert scored.output.completion == "ANSWER: A"  # the scripted planner's reply, through the agent and facade
    assert scored.scores is not None and scored.scores["choice"].value == "C"
    assert log.results is not None and log.results.scores[0].metrics["accuracy"].value == 1.0
    requests = served.planner.requests[calls_before:]
    assert [call["function"]["name"] for request in requests for message in request.messages
            for call in message.get("tool_calls") or []][:1] == ["outline_image"]  # the expert ran on the image


def test_the_readme_openai_client_example_runs_as_printed(served: FacadeServed, nih_images: list[Path],
                                                          tmp_path: Path) -> None:
    code = snippet((REPO_ROOT / "README.md").read_text(encoding="utf-8"), OPENAI_MARKER)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    (tmp_path / "chest.png").write_bytes(nih_images[0].read_bytes())
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MEDAGENT_")}
    environment["MEDAGENT_KEY"] = new_key(served.home, "readme")
    result = subprocess.run([sys.executable, "-c", code.replace("localhost:8080", f"127.0.0.1:{served.port}")],
                            check=False, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [ANSWER, "['outline_image']"], result.stdout
