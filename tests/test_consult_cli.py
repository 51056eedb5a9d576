"""``medagent chat --as-patient CASE`` and ``--human-patient``: a person at the terminal plays the
doctor or the patient; the other roles are planners behind a real OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_SECRET
from tests.fake_openai_server import FakeOpenAIServer, text


def _chat(args: list[str], home: Path, typed: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MEDAGENT_HOME": str(home), "MEDAGENT_DEID_SECRET": TEST_SECRET.decode(),
                   "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "medagent.cli", "chat", *args], input=typed, capture_output=True,
                          text=True, env=environment, timeout=300)


def _turns(stdout: str, speaker: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"{speaker} (")]


def test_a_person_plays_the_doctor_against_a_simulated_patient(tmp_path: Path) -> None:
    # the patient model tries to name the diagnosis: the leak guard must keep it off the transcript
    with FakeOpenAIServer([text("I read online that it is pneumonia, doctor.")]) as server:
        result = _chat(["--as-patient", "builtin-pneumonia", "--endpoint", server.url, "--max-turns", "4"],
                       tmp_path, "When did the cough start?\ntest: temperature\ndiagnosis: pneumonia\n")
        requests = server.chat_requests()
    assert result.returncode == 0, result.stderr
    assert _turns(result.stdout, "doctor") == ["doctor (ask): When did the cough start?",
                                               "doctor (request_test): temperature", "doctor (diagnose): pneumonia"]
    patient = _turns(result.stdout, "patient")
    assert len(patient) >= 2 and all("pneumonia" not in line.lower() for line in patient)
    assert len(_turns(result.stdout, "measurement")) == 1
    assert "ended: diagnosis" in result.stdout and "case diagnosis: pneumonia (correct)" in result.stdout
    # nothing the simulated roles were sent names the diagnosis
    assert requests and all("pneumonia" not in json.dumps(r["body"]["messages"]).lower()
                            for r in requests if r["body"]["messages"][0]["content"].startswith("You are a patient"))


def test_a_person_plays_the_patient_and_the_planner_is_the_doctor(tmp_path: Path) -> None:
    steps = [text(json.dumps({"action": "ask", "text": "How long have you had the cough?"})),
             text(json.dumps({"action": "diagnose", "text": "acute bronchitis",
                              "explanation": "A short cough after a cold; rest and fluids."}))]
    with FakeOpenAIServer(steps) as server:
        result = _chat(["--human-patient", "--endpoint", server.url], tmp_path,
                       "I have had a cough.\nSince Monday.\nThank you. [END]\n")
        requests = server.chat_requests()
    assert result.returncode == 0, result.stderr
    assert _turns(result.stdout, "patient")[:2] == ["patient (answer): I have had a cough.",
                                                    "patient (answer): Since Monday."]
    assert _turns(result.stdout, "doctor") == ["doctor (ask): How long have you had the cough?",
                                               "doctor (diagnose): acute bronchitis"]
    assert "ended: diagnosis" in result.stdout
    # the doctor's replies are schema-constrained, and it heard the patient's words
    assert all("response_format" in r["body"] for r in requests)
    assert "Since Monday." in json.dumps(requests[-1]["body"]["messages"])


def test_consultation_options_are_checked(tmp_path: Path) -> None:
    both = _chat(["--as-patient", "builtin-pneumonia", "--human-patient"], tmp_path, "")
    assert both.returncode == 2 and "not both" in both.stderr
    unknown = _chat(["--as-patient", "no-such-case", "--endpoint", "http://127.0.0.1:9/v1"], tmp_path, "")
    assert unknown.returncode == 2 and "unknown_case" in unknown.stderr and "builtin-pneumonia" in unknown.stderr
