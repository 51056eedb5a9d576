"""Every shipped workflow runs as written on a fresh install, as its header comment documents: the chest
X-ray workflows on the shared NIH chest X-rays (``--dataset``), the comparison refuses to start while an
endpoint it names is down, the dialogue benchmark calls its expert only on images that suit it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.errors import PlannerUnavailable
from medagent.store import StudyStore
from medagent.studies import load_study, with_dataset
from medagent.studies.runner import run_study
from medagent.yaml_located import StudyConfigError
from tests.conftest import NIH_DIR, REPO_ROOT, TEST_SECRET

WORKFLOWS = REPO_ROOT / "workflows"
FINISHED = re.compile(r"run (\S+) finished")


def _medagent(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   "MEDAGENT_XRV_CACHE_DIR": str(home / "xrv"), "MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY": "1",
                   "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "medagent.cli", *args], check=False, capture_output=True, text=True,
                          env=environment, timeout=600, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_each_workflow_header_documents_how_to_run_it() -> None:
    for path in WORKFLOWS.glob("*.yaml"):
        header = path.read_text().split("\nname:", 1)[0]
        assert f"medagent run workflows/{path.name}" in header, path.name
    for name in ("cxr-triage.yaml", "chat.yaml"):
        assert "--dataset ../shared/data/torchxrayvision-nih" in (WORKFLOWS / name).read_text(), name


def test_a_folder_of_images_stands_in_for_a_manifest_or_a_missing_dataset(tmp_path: Path) -> None:
    triage = with_dataset(load_study(WORKFLOWS / "cxr-triage.yaml"), NIH_DIR)
    assert triage.dataset is not None and triage.dataset.type == "folder" and len(triage.cases()) == 2
    chat = with_dataset(load_study(WORKFLOWS / "chat.yaml"), NIH_DIR)
    assert chat.dataset is not None and chat.dataset.type == "folder" and chat.dataset.modality is None
    single = tmp_path / "one.csv"
    single.write_text("path\n")
    with pytest.raises(StudyConfigError, match="no dataset to replace"):
        with_dataset(load_study(WORKFLOWS / "chat.yaml"), single)


@pytest.mark.torch
@pytest.mark.slow
def test_cxr_triage_runs_as_written_on_the_shared_chest_xrays(tmp_path: Path, nih_images: list[Path]) -> None:
    """No --modality anywhere: the PNG radiographs are recognised as DX, so every step can run."""
    result = _medagent(["run", "workflows/cxr-triage.yaml", "--dataset", str(NIH_DIR), "--run-id", "triage"],
                       tmp_path / "home")
    assert result.returncode == 0, result.stderr[-3000:]
    assert FINISHED.search(result.stdout) and "0 failed" in result.stdout, result.stdout
    with StudyStore.open(None, tmp_path / "home") as store:
        cases = store.cases("triage")
        assert len(cases) == len(nih_images) and {case.status for case in cases} == {"succeeded"}
        tools = {call.tool for call in store.tool_calls("triage") if call.ok}
    assert {"assess_image_quality", "classify_chest_xray"} <= tools
    assert "UNTRAINED" in result.stdout  # the test-only weights are said to be untrained
    report = _medagent(["report", "triage", "--out", str(tmp_path / "report")], tmp_path / "home")
    assert report.returncode == 0, report.stderr[-3000:]


@pytest.mark.llama
@pytest.mark.slow
def test_chat_workflow_runs_as_written_on_a_shared_chest_xray(tmp_path: Path, nih_images: list[Path]) -> None:
    """The embedded planner (structured tool calls) over one shared chest X-ray: it calls an expert."""
    result = _medagent(["run", "workflows/chat.yaml", "--dataset", str(NIH_DIR), "--limit", "1", "--run-id", "chat"],
                       tmp_path / "home")
    assert result.returncode == 0, result.stderr[-3000:]
    with StudyStore.open(None, tmp_path / "home") as store:
        [case] = store.cases("chat")
        assert case.status == "succeeded", case.error
        assert store.tool_calls("chat"), "the planner called no expert"


@pytest.mark.asyncio
async def test_planner_comparison_refuses_to_start_while_an_endpoint_is_down(tmp_path: Path, settings: Settings,
                                                                            nih_images: list[Path]) -> None:
    dead = f"http://user:secret@127.0.0.1:{_free_port()}/v1"  # nothing listens there
    text = (WORKFLOWS / "planner-comparison.yaml").read_text().replace("http://127.0.0.1:8000/v1", dead)
    study = tmp_path / "planner-comparison.yaml"
    study.write_text(text)
    config = with_dataset(load_study(study), NIH_DIR)
    with StudyStore.open(None, settings.home) as store:
        with pytest.raises(PlannerUnavailable) as raised:
            _ = [event async for event in run_study(config, store=store, settings=settings, run_id="cmp")]
        assert store.get_run("cmp") is None  # refused before the run (or any case) existed
    message = raised.value.message
    assert "arm 'vllm'" in message and "127.0.0.1" in message and "no case ran" in message
    assert "secret" not in message  # credentials never reach the message


def test_planner_comparison_names_the_unreachable_endpoint_on_the_command_line(tmp_path: Path) -> None:
    """As written (vLLM expected on 127.0.0.1:8000): with no server there, one typed error, no run."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.fail("something listens on 127.0.0.1:8000; this test needs the port free")
    result = _medagent(["run", "workflows/planner-comparison.yaml", "--dataset", str(NIH_DIR), "--run-id", "cmp"],
                       tmp_path / "home")
    assert result.returncode != 0
    assert "planner_unavailable" in result.stderr and "127.0.0.1:8000" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    with StudyStore.open(None, tmp_path / "home") as store:
        assert store.get_run("cmp") is None


@pytest.mark.torch
@pytest.mark.asyncio
async def test_dialogue_bench_calls_its_expert_only_on_images_that_suit_it(tmp_path: Path, nih_images: list[Path],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in cases carry CT, MR and NIfTI images: the chest X-ray classifier that gives the doctor its
    hints is not called on them (it used to fail on every one with precondition_failed); a chest X-ray gets
    its hints."""
    from medagent.simulators.builtin import builtin_label_set
    from medagent.studies.dialogue_graph import DialogueGraph
    from medagent.studies.dialogue_runner import DialogueCaseRunner
    from medagent.tools.builtin import Toolbox

    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    config = load_study(WORKFLOWS / "dialogue-bench.yaml")
    graph = config.graph
    assert isinstance(graph, DialogueGraph) and graph.strategy == "dialogue_with_experts"
    assert graph.expert == "classify_chest_xray"
    settings = Settings(home=tmp_path / "home", xrv_cache_dir=tmp_path / "xrv", allow_untrained_test_only=True)
    toolbox = Toolbox(settings)
    runner = DialogueCaseRunner(graph, toolbox, builtin_label_set(), None)
    cases = config.cases()
    assert cases and all(case.images for case in cases)
    for case in cases:
        hints, calls = await runner._hints([toolbox.attach(path).id for path in case.images])
        assert hints == [] and calls == [], case.case_id
    hints, calls = await runner._hints([toolbox.attach(nih_images[0]).id])
    assert [call.ok for call in calls] == [True] and len(hints) == graph.top_k
    toolbox.close()


@pytest.mark.llama
@pytest.mark.slow
def test_dialogue_bench_runs_as_written_on_the_embedded_planner(tmp_path: Path) -> None:
    """Every role on the embedded SmolLM2 over the built-in cases: a whole consultation, assessed and reported."""
    home = tmp_path / "home"
    result = _medagent(["run", "workflows/dialogue-bench.yaml", "--limit", "1", "--run-id", "bench"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert FINISHED.search(result.stdout) and "0 failed" in result.stdout, result.stdout
    with StudyStore.open(None, home) as store:
        [case] = store.cases("bench")
        assert case.status == "succeeded", case.error
        transcript = store.messages("bench", case.case_id, 0)
        roles = [message["role"] for message in transcript]
        assert case.result is not None and case.result["assessment"]["scores"], case.result
        assert case.model_id == case.result["models"]["doctor"] and "smollm2" in str(case.model_id).lower()
        assert case.columns["dialogue.stop_reason"] in {"diagnosis", "patient_stop", "turn_limit", "timeout"}
        truth = str(case.columns["dialogue.truth"]).lower()  # the simulated patient never says the diagnosis
        assert all(truth not in str(m["content"]).lower() for m in transcript if m["role"] == "patient")
    assert roles[0] == "patient" and "doctor" in roles  # the patient opens, the doctor answers
    report = _medagent(["report", "bench", "--out", str(tmp_path / "report")], home)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Diagnostic dialogues" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.slow
def test_planner_comparison_runs_as_written_with_both_arms_on_the_same_case(tmp_path: Path, nih_images: list[Path],
                                                                           settings: Settings) -> None:
    """Both arms as written (the embedded SmolLM2, and an OpenAI-compatible server standing in for vLLM: a real HTTP
    server on 127.0.0.1, its URL the only line changed) answer the same chest X-ray in every repeat, each with its
    own planner settings and the repeat's seed; the served endpoint is checked before any question is asked."""
    from medagent.tools.builtin import Toolbox
    from tests.fake_openai_server import FakeOpenAIServer, text, tool

    toolbox = Toolbox(settings)  # image ids are content-addressed: the served arm's call can name the image
    image_id = toolbox.attach(nih_images[0], "DX").id  # the folder's first image, the only case under --limit 1
    toolbox.close()
    answer = "Yes. The cardiac silhouette is enlarged on the classifier's reading."
    written = (WORKFLOWS / "planner-comparison.yaml").read_text()
    served_model = "Qwen/Qwen2.5-1.5B-Instruct"
    # the first question of the served arm calls an expert, every later request is answered
    with FakeOpenAIServer([tool("classify_chest_xray", {"image_id": image_id}), text(answer)],
                          model=served_model) as server:
        study = tmp_path / "planner-comparison.yaml"
        study.write_text(written.replace("http://127.0.0.1:8000/v1", server.url))
        changed = [(a, b) for a, b in zip(written.splitlines(), study.read_text().splitlines(), strict=True) if a != b]
        assert len(changed) == 1 and "endpoint:" in changed[0][0]
        result = _medagent(["run", str(study), "--dataset", str(NIH_DIR), "--limit", "1", "--run-id", "cmp"],
                           settings.home)
        requests = list(server.requests)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run cmp finished: 6/6 cases, 0 failed" in result.stdout, result.stdout
    assert requests[0]["path"].endswith("/models")  # checked before the run started
    chats = [request["body"] for request in requests if request["path"].endswith("/chat/completions")]
    assert chats and {body["model"] for body in chats} == {served_model}
    assert {(body["temperature"], body["max_tokens"]) for body in chats} == {(0.0, 384)}
    assert {body["seed"] for body in chats} == {11, 12, 13}  # one seed per repeat, as the workflow lists them
    assert all("classify_chest_xray" in {t["function"]["name"] for t in body["tools"]} for body in chats)
    with StudyStore.open(None, settings.home) as store:
        cases = store.cases("cmp")
        runs = {(case.case_id.split(":", 1)[0], case.repeat): case for case in cases}
        assert set(runs) == {(arm, repeat) for arm in ("embedded", "vllm") for repeat in range(3)}
        assert len({case.case_id.split(":", 1)[1] for case in cases}) == 1  # the same case in both arms
        assert {case.status for case in cases} == {"succeeded"}
        assert {(arm, case.seed) for (arm, repeat), case in runs.items()} == {
            (arm, seed) for arm in ("embedded", "vllm") for seed in (11, 12, 13)}
        assert {case.model_id for (arm, _), case in runs.items() if arm == "vllm"} == {served_model}
        assert all("smollm2" in str(case.model_id).lower() for (arm, _), case in runs.items() if arm == "embedded")
        assert all(case.answer for case in cases)
        assert {case.answer for (arm, _), case in runs.items() if arm == "vllm"} == {answer}
        served_calls = [call for case in cases if case.case_id.startswith("vllm:")
                        for call in store.tool_calls("cmp", case.case_id, case.repeat)]
        assert [(call.tool, call.ok) for call in served_calls] == [("classify_chest_xray", True)]
    report = _medagent(["report", "cmp", "--out", str(tmp_path / "report")], settings.home)
    assert report.returncode == 0, report.stderr[-3000:]
    text_of_report = (tmp_path / "report" / "report.md").read_text()
    models = re.search(r"^planner models: (.+)$", text_of_report, re.MULTILINE)
    assert models is not None and served_model in models.group(1) and "smollm2" in models.group(1).lower()
    assert "6 succeeded, 0 failed" in text_of_report
