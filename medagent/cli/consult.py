"""``medagent chat --as-patient CASE`` and ``--human-patient``: AgentClinic's human modes.

With ``--as-patient CASE`` a simulated patient plays the case and the person at the terminal is the
doctor (``test: NAME`` orders a test, ``diagnosis: NAME`` concludes); with ``--human-patient`` the
person is the patient and medagent's planner is the doctor. The measurement agent answers tests.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from medagent.agents.planner import PlannerConfig
from medagent.cli.terminal import safe
from medagent.dialogue.cases import DialogueCase, PatientFacts
from medagent.errors import ConfigurationError

console = Console()


class UnknownCase(ConfigurationError):
    code = "unknown_case"


def find_case(case_id: str, cases_file: Path | None) -> DialogueCase:
    from medagent.simulators.builtin import builtin_cases
    from medagent.simulators.loaders import load_cases

    cases = load_cases(cases_file) if cases_file is not None else builtin_cases()
    for case in cases:
        if case.case_id == case_id:
            return case
    shown = ", ".join(case.case_id for case in cases[:8]) + (" ..." if len(cases) > 8 else "")
    raise UnknownCase(f"no case '{case_id}' in {'the case file' if cases_file else 'the built-in cases'}; "
                      f"ids: {shown}", case_id=case_id)


def _unknown_patient() -> DialogueCase:
    """The case a person brings: nothing is known beforehand, tests read as normal."""
    return DialogueCase(case_id="human-patient", patient=PatientFacts(primary_symptom="told by the patient"),
                        diagnosis="unknown")


async def _terminal_ask(prompt: str) -> str:
    console.print(safe(prompt))
    if sys.stdin.isatty():
        return await asyncio.to_thread(input, "> ")
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        return "/end"  # input closed: the person has left
    return line.rstrip("\n")


async def consult(*, case_id: str | None, human_patient: bool, cases_file: Path | None, temperament: str | None,
                  biases: list[str], max_turns: int, planner: Callable[[str], PlannerConfig]) -> None:
    """``planner``: role name -> that role's planner configuration (the CLI's --backend, --endpoint, --model)."""
    from medagent.agents.doctor import DoctorAgent
    from medagent.assembly import Assembly
    from medagent.dialogue.protocol import DialogueSettings, run_dialogue
    from medagent.simulators.builtin import builtin_label_set, open_label_set
    from medagent.simulators.human import HumanDoctor, HumanPatient
    from medagent.simulators.measurement import MeasurementAgent
    from medagent.simulators.patient import SimulatedPatient

    case = find_case(case_id, cases_file) if case_id else _unknown_patient()
    label_set = (builtin_label_set() if cases_file is None else open_label_set([case])) if case_id else None
    async with Assembly() as root:
        role = planner

        measurement = MeasurementAgent(await root.planner(role("measurement")), case)
        if human_patient:
            doctor = DoctorAgent(await root.planner(role("planner")), label_set=label_set)
            patient: HumanPatient | SimulatedPatient = HumanPatient(_terminal_ask)
        else:
            doctor = HumanDoctor(_terminal_ask)  # type: ignore[assignment]
            patient = SimulatedPatient(await root.planner(role("patient")), case,
                                       temperament=temperament or case.temperament, biases=biases)
        outcome = await run_dialogue(case, doctor=doctor, patient=patient, measurement=measurement,
                                     label_set=label_set, settings=DialogueSettings(max_turns=max_turns))
    for turn in outcome.turns:
        console.print(f"[bold]{safe(turn.speaker)}[/] ({safe(turn.action)}): {safe(turn.text)}")
    console.print(f"[dim]ended: {safe(outcome.stop_reason)}; diagnosis: {safe(outcome.diagnosis_text)}[/]")
    if not human_patient:
        verdict = "correct" if outcome.diagnosis == (label_set.normalise(case.diagnosis) if label_set else None) \
            else "not correct"
        console.print(f"case diagnosis: {safe(case.diagnosis)} ({verdict})")
