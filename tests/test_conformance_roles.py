"""Every built-in consultation role passes medagent.testing's role suite, and a broken role fails it."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from medagent.agents.doctor import DoctorAgent
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner
from medagent.dialogue.cases import DialogueCase
from medagent.dialogue.protocol import DoctorBrief, Reply, Turn
from medagent.errors import PlannerUnavailable
from medagent.simulators.assessor import assess
from medagent.simulators.builtin import builtin_label_set
from medagent.simulators.human import HumanDoctor, HumanPatient
from medagent.simulators.measurement import MeasurementAgent
from medagent.simulators.patient import SimulatedPatient
from medagent.simulators.scripted import scripted_role
from medagent.testing import RoleConformance, parametrize_checks


def _down(request: PlannerRequest) -> str:
    raise PlannerUnavailable("planner server at http://127.0.0.1:9/v1 cannot be reached")


def _unreachable() -> ScriptedPlanner:
    return ScriptedPlanner(_down, model="down")


async def _typed(prompt: str) -> str:
    """A person at the terminal: asks one question, then names a label of the closed set."""
    return "diagnosis: pneumonia" if "diagnosis" in prompt.lower() and "final" in prompt.lower() else "It hurts."


BUILTIN: dict[str, tuple[str, Any, Any]] = {
    "simulated-patient": ("patient", lambda case: SimulatedPatient(scripted_role("patient"), case),
                          lambda case: SimulatedPatient(_unreachable(), case)),
    "human-patient": ("patient", lambda case: HumanPatient(_typed), None),
    "measurement-agent": ("measurement", lambda case: MeasurementAgent(scripted_role("measurement"), case),
                          lambda case: MeasurementAgent(_unreachable(), case)),
    "doctor-agent": ("doctor", lambda case: DoctorAgent(scripted_role("planner"), label_set=builtin_label_set()),
                     # a model whose replies never fit the step schema: re-asked, then a typed error
                     lambda case: DoctorAgent(ScriptedPlanner(lambda r: "I think it is a cold."), max_reasks=1)),
    "human-doctor": ("doctor", lambda case: HumanDoctor(_typed), None),
    "assessor": ("assessor", lambda case: functools.partial(assess, scripted_role("assessor")),
                 lambda case: functools.partial(assess, scripted_role("assessor", malformed=99), max_reasks=1)),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(BUILTIN))
async def test_every_builtin_role_passes_the_role_suite(name: str) -> None:
    role, make, failing = BUILTIN[name]
    report = await RoleConformance(role, make, failing=failing).verify()
    expected_skips = {"patient": 0, "measurement": 1, "doctor": 1, "assessor": 2}[role] + (failing is None)
    assert len(report.skipped) == expected_skips, report.skipped  # every check that applies ran


@pytest.mark.asyncio
@parametrize_checks(RoleConformance)
async def test_one_check_at_a_time(check: str) -> None:
    """The pytest helper: one test per check of a suite (here on the simulated patient)."""
    make, failing = BUILTIN["simulated-patient"][1:]
    await RoleConformance("patient", make, failing=failing).run(check)  # every check applies to a patient


# -- broken roles: each breaks one contract, and the suite says so ----------------------------------------


class EchoingPatient:
    """Repeats the doctor's words: names the diagnosis whenever the doctor does."""

    async def served_model(self) -> str | None:
        return None

    async def respond(self, turns: list[Turn]) -> Reply:
        return Reply(action="answer", text=turns[-1].text if turns else "I have a cough.")


class StubbornDoctor:
    """Never diagnoses, not even on its final turn."""

    async def served_model(self) -> str | None:
        return "stubborn"

    async def begin(self, brief: DoctorBrief) -> None:
        return None

    async def respond(self, turns: list[Turn], *, final: bool = False) -> Reply:
        return Reply(action="ask", text="Anything else?", model="stubborn")


class ChattyMeasurement:
    """Asks back instead of reporting results, and names a model it does not serve."""

    async def served_model(self) -> str | None:
        return "lab"

    async def respond(self, turns: list[Turn]) -> Reply:
        return Reply(action="ask", text="Which test?", model="another-lab")


async def _raw_assessor(case: DialogueCase, outcome: Any) -> Any:
    raise KeyError("overall")  # a parsing bug that escapes untyped


BROKEN: dict[str, tuple[str, Any, Any, str]] = {
    "patient names the diagnosis": ("patient", lambda case: EchoingPatient(), None, "keeps_the_diagnosis_secret"),
    "doctor never diagnoses": ("doctor", lambda case: StubbornDoctor(), None, "replies"),
    "measurement asks back": ("measurement", lambda case: ChattyMeasurement(), None, "replies"),
    "assessor raises raw errors": ("assessor", lambda case: _raw_assessor, lambda case: _raw_assessor,
                                   "typed_errors"),
    "patient ignores its failing model": ("patient", lambda case: EchoingPatient(), lambda case: EchoingPatient(),
                                          "typed_errors"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(BROKEN))
async def test_a_broken_role_fails_the_suite(name: str) -> None:
    role, make, failing, check = BROKEN[name]
    report = await RoleConformance(role, make, failing=failing).report()
    assert check in report.failed, (report.failed, report.passed)
    with pytest.raises(AssertionError, match=check):
        report.raise_for_failures()


def test_the_suites_import_without_pytest() -> None:
    """Users run the suites from any test runner: importing them must not need pytest."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['pytest'] = None; import medagent.testing as t; "
            "[getattr(t, name) for name in t.__all__]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
