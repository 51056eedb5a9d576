"""The dialogue protocol with scripted models: exact checks on turns, stops, leaks, re-asks and prompts."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

import pytest

from medagent.agents.doctor import DoctorAgent, DoctorReplyInvalid, doctor_schema
from medagent.agents.scripted import PlannerRequest, ScriptedPlanner
from medagent.dialogue.cases import DialogueCase, ExaminerFacts, PatientFacts
from medagent.dialogue.labels import Label, LabelSet
from medagent.dialogue.protocol import (
    DialogueOutcome,
    DialogueSettings,
    ExpertHint,
    Reply,
    SpeakerProtocolError,
    Turn,
    extract_diagnosis,
    run_dialogue,
)
from medagent.errors import ConfigurationError, PlannerTimeout
from medagent.simulators.assessor import AssessmentFailed, RubricScores, assess, rubric_schema
from medagent.simulators.human import HumanDoctor, HumanPatient
from medagent.simulators.measurement import NORMAL_READINGS, MeasurementAgent
from medagent.simulators.patient import REDACTED, STOP_SIGNAL, SimulatedPatient
from medagent.simulators.personas import (
    AXES,
    UnknownPersona,
    patient_bias,
    patient_biases,
    temperament_profile,
    temperament_profiles,
)

LABELS = LabelSet(name="neuro", labels=[
    Label(name="myasthenia gravis", synonyms=["autoimmune myasthenia", "MG"]),
    Label(name="lambert-eaton syndrome", synonyms=["lambert eaton myasthenic syndrome"]),
    Label(name="multiple sclerosis"),
])
CASE = DialogueCase(
    case_id="mg-1", source="agentclinic", objective="Assess the patient presenting with double vision.",
    patient=PatientFacts(demographics="35-year-old female", history="One month of double vision, worse after activity.",
                         primary_symptom="Double vision", secondary_symptoms=["Difficulty climbing stairs"],
                         social_history="Works as a graphic designer."),
    examiner=ExaminerFacts(
        physical_examination={"Vital_Signs": {"Blood_Pressure": "125/80 mmHg"},
                              "Neurological_Examination": {"Cranial_Nerves": "Ptosis worse on upward gaze"}},
        test_results={"Blood_Tests": {"Acetylcholine_Receptor_Antibodies": "Present (elevated)"}}),
    diagnosis="Myasthenia gravis", synonyms=["autoimmune myasthenia"], label_set="neuro")
SCORES = {"history": 1, "current_symptoms": 1, "explains_conclusion": 0, "respect_empathy": 1, "respects_wishes": 1,
          "diagnostic_plan": 0, "treatment_plan": 1, "overall": "satisfactory"}


def _steps(*steps: dict[str, str]) -> ScriptedPlanner:
    """A doctor that takes ``steps`` in order, repeating the last."""
    return ScriptedPlanner(lambda request: json.dumps(steps[min(request.call_index, len(steps) - 1)]), model="doc")


def _replies(*texts: str) -> ScriptedPlanner:
    return ScriptedPlanner(lambda request: texts[min(request.call_index, len(texts) - 1)], model="pat")


ASK = {"action": "ask", "text": "Does it get worse in the evening?"}
DIAGNOSE = {"action": "diagnose", "text": "myasthenia gravis", "explanation": "Fatigable weakness; pyridostigmine."}


async def _run(doctor: ScriptedPlanner, patient: ScriptedPlanner, *, case: DialogueCase = CASE,
               measurement: ScriptedPlanner | None = None, hints: list[ExpertHint] | None = None,
               **settings: object) -> DialogueOutcome:
    measurement = measurement or _replies("RESULTS: none")
    return await run_dialogue(
        case, doctor=DoctorAgent(doctor, label_set=LABELS), patient=SimulatedPatient(patient, case),
        measurement=MeasurementAgent(measurement, case), label_set=LABELS,
        settings=DialogueSettings.model_validate(settings), hints=hints or [])


def _mentions_diagnosis(text: str) -> bool:
    return re.search(r"myasthenia[\s-]+gravis|autoimmune myasthenia", text, re.IGNORECASE) is not None


@pytest.mark.asyncio
async def test_the_patient_never_leaks_the_diagnosis_the_guard_redacts_and_counts() -> None:
    patient = _replies("My eyes see double.", "My cousin says it is Myasthenia-Gravis, or autoimmune myasthenia.")
    outcome = await _run(_steps(ASK, DIAGNOSE), patient, patient_closing=False)
    assert [(t.speaker, t.action) for t in outcome.turns] == [("patient", "answer"), ("doctor", "ask"),
                                                               ("patient", "answer"), ("doctor", "diagnose")]
    assert outcome.leaks_redacted == 2
    assert outcome.turns[2].text == f"My cousin says it is {REDACTED}, or {REDACTED}."
    assert not any(_mentions_diagnosis(t.text) for t in outcome.turns if t.speaker == "patient")
    assert outcome.stop_reason == "diagnosis" and outcome.diagnosis == "myasthenia gravis"
    assert outcome.models == {"doctor": "doc", "patient": "pat", "measurement": "pat"}


@pytest.mark.asyncio
async def test_no_patient_prompt_ever_contains_the_diagnosis_even_when_the_facts_or_the_doctor_say_it() -> None:
    leaky = CASE.model_copy(update={"patient": CASE.patient.model_copy(
        update={"history": "Her sister has myasthenia gravis too."})})
    patient = _replies("Double vision.", "Thank you. [END]")
    outcome = await _run(_steps(DIAGNOSE), patient, case=leaky)
    prompts = [m["content"] for r in patient.requests for m in r.messages]
    assert len(patient.requests) == 2 and prompts
    assert not any(_mentions_diagnosis(text) for text in prompts)
    assert any(f"sister has {REDACTED}" in text for text in prompts)  # the fact stays, the name goes
    assert outcome.turns[-1].speaker == "patient" and outcome.turns[-1].action == "stop"


@pytest.mark.asyncio
async def test_the_stop_signal_ends_the_dialogue() -> None:
    doctor = _steps(ASK)
    outcome = await _run(doctor, _replies("Double vision.", f"I have had enough, goodbye. {STOP_SIGNAL}"))
    assert outcome.stop_reason == "patient_stop"
    assert len(doctor.requests) == 1
    assert outcome.turns[-1].action == "stop" and outcome.turns[-1].text == "I have had enough, goodbye."
    assert outcome.diagnosis is None and outcome.diagnosis_text is None


@pytest.mark.asyncio
async def test_the_turn_limit_holds_and_the_doctor_is_asked_once_for_a_final_diagnosis() -> None:
    def doctor(request: PlannerRequest) -> str:
        schema = request.response_schema or {}
        return json.dumps(DIAGNOSE if "anyOf" not in schema else ASK)  # diagnoses only when forced

    planner = ScriptedPlanner(doctor, model="doc")
    outcome = await _run(planner, _replies("Double vision.", "Yes, in the evening."), max_turns=3,
                         patient_closing=False)
    doctor_turns = [t for t in outcome.turns if t.speaker == "doctor"]
    assert [t.action for t in doctor_turns] == ["ask", "ask", "diagnose"]
    assert outcome.stop_reason == "turn_limit" and outcome.diagnosis == "myasthenia gravis"
    final = planner.requests[-1]
    assert final.response_schema == doctor_schema(LABELS, final=True)
    assert "last turn" in final.messages[-1]["content"]
    assert all("last turn" not in m["content"] for r in planner.requests[:-1] for m in r.messages)
    assert [t.index for t in outcome.turns] == list(range(len(outcome.turns)))


@pytest.mark.asyncio
async def test_one_shot_asks_nothing_and_sees_only_the_opening_complaint() -> None:
    doctor = _steps(DIAGNOSE)
    patient = _replies("I am seeing double.", "Thanks! [END]")
    outcome = await _run(doctor, patient, strategy="one_shot", max_turns=10)
    assert [(t.speaker, t.action) for t in outcome.turns] == [("patient", "answer"), ("doctor", "diagnose"),
                                                               ("patient", "stop")]
    assert outcome.stop_reason == "diagnosis" and outcome.strategy == "one_shot"
    (request,) = doctor.requests
    assert request.response_schema == doctor_schema(LABELS, final=True)
    context = "\n".join(m["content"] for m in request.messages)
    assert "I am seeing double." in context and "stairs" not in context and "double vision." not in context
    opening_prompt = "\n".join(m["content"] for m in patient.requests[0].messages)
    assert "Double vision" in opening_prompt and "stairs" not in opening_prompt and "graphic" not in opening_prompt


@pytest.mark.asyncio
async def test_a_test_request_reaches_the_measurement_agent_which_answers_from_examiner_facts_only() -> None:
    measurement = _replies("RESULTS: acetylcholine receptor antibodies present (elevated).")
    doctor = _steps({"action": "request_test", "text": "acetylcholine receptor antibody blood test"}, DIAGNOSE)
    outcome = await _run(doctor, _replies("Double vision.", "Thanks [END]"), measurement=measurement)
    assert [(t.speaker, t.action) for t in outcome.turns][:4] == [
        ("patient", "answer"), ("doctor", "request_test"), ("measurement", "answer"), ("doctor", "diagnose")]
    assert outcome.turns[2].text == "RESULTS: acetylcholine receptor antibodies present (elevated)."
    (request,) = measurement.requests
    prompt = "\n".join(m["content"] for m in request.messages)
    assert "Acetylcholine Receptor Antibodies: Present (elevated)" in prompt
    assert "Cranial Nerves" not in prompt  # narrowed to the section the request names
    assert "graphic designer" not in prompt and not _mentions_diagnosis(prompt)
    assert "Test results: RESULTS: acetylcholine" in doctor.requests[1].messages[-1]["content"]


@pytest.mark.asyncio
async def test_a_case_without_examiner_facts_reads_normal_without_a_model_call() -> None:
    measurement = _replies("should not be called")
    bare = CASE.model_copy(update={"examiner": ExaminerFacts()})
    doctor = _steps({"action": "request_test", "text": "chest X-ray"}, DIAGNOSE)
    outcome = await _run(doctor, _replies("Double vision.", "Bye [END]"), case=bare, measurement=measurement)
    assert outcome.turns[2].speaker == "measurement" and outcome.turns[2].text == NORMAL_READINGS
    assert outcome.turns[2].model is None and measurement.requests == []


@pytest.mark.asyncio
async def test_an_unmatched_request_gives_the_model_all_findings_to_judge() -> None:
    agent = MeasurementAgent(_replies(NORMAL_READINGS), CASE)
    prompt = "\n".join(m["content"] for m in agent.messages("abdominal ultrasound"))
    assert "Blood Pressure: 125/80 mmHg" in prompt and "Cranial Nerves" in prompt and NORMAL_READINGS in prompt


@pytest.mark.asyncio
async def test_the_doctor_is_re_asked_on_invalid_steps_then_fails_typed() -> None:
    bad = ScriptedPlanner(lambda r: ["not json", json.dumps({"action": "diagnose", "text": "flu",
                                                             "explanation": ""}), "{}"][r.call_index], model="doc")
    with pytest.raises(DoctorReplyInvalid) as failure:
        await DoctorAgent(bad, label_set=LABELS).respond([Turn(index=0, speaker="patient", action="answer",
                                                               text="Double vision.", elapsed_s=0)])
    assert failure.value.code == "doctor_reply_invalid" and failure.value.details["attempts"] == 3
    assert "not one of the allowed diagnoses" in bad.requests[2].messages[-1]["content"]
    assert "flu" not in failure.value.message  # the model's words are not echoed into errors
    good = ScriptedPlanner(lambda r: "oops" if r.call_index == 0 else json.dumps(ASK), model="doc")
    reply = await DoctorAgent(good, label_set=LABELS).respond([])
    assert reply.action == "ask" and len(good.requests) == 2
    # a raw line break inside a string (small models under some grammars emit it) is kept, not re-asked
    wrapped = ScriptedPlanner(lambda r: '{"action": "ask", "text": "Since when?\nAnd where?"}', model="doc")
    reply = await DoctorAgent(wrapped, label_set=LABELS).respond([])
    assert reply.text == "Since when?\nAnd where?" and len(wrapped.requests) == 1


def test_the_doctor_schema_binds_the_diagnosis_to_the_closed_label_set() -> None:
    schema = doctor_schema(LABELS, final=False, max_text_chars=120)
    converse, diagnose = schema["anyOf"]
    assert converse["properties"]["action"]["enum"] == ["ask", "request_test"]
    assert diagnose["properties"]["text"]["enum"] == [*LABELS.names, "none"]
    assert converse["properties"]["text"]["maxLength"] == 120
    with pytest.raises(ConfigurationError):  # a bound llama.cpp's grammar parser would refuse
        DoctorAgent(_steps(ASK), max_text_chars=2000)
    with pytest.raises(ValueError, match="longer than 120"):
        DoctorAgent(_steps(ASK), max_text_chars=120).parse(json.dumps({"action": "ask", "text": "?" * 121}),
                                                           final=False)
    open_set = LABELS.model_copy(update={"closed": False})
    assert doctor_schema(open_set, final=True)["properties"]["text"] == {"type": "string", "minLength": 1}


@pytest.mark.asyncio
async def test_a_malformed_assessment_is_re_asked_then_raises_assessment_failed() -> None:
    outputs = ["no json here", json.dumps({**SCORES, "history": 2}), json.dumps({**SCORES, "overall": "great"})]
    assessor = ScriptedPlanner(lambda r: outputs[r.call_index], model="judge")
    outcome = await _run(_steps(DIAGNOSE), _replies("Double vision.", "Thanks [END]"))
    with pytest.raises(AssessmentFailed) as failure:
        await assess(assessor, CASE, outcome, max_reasks=2)
    assert failure.value.code == "assessment_failed" and failure.value.family == "infrastructure"
    assert len(assessor.requests) == 3 and failure.value.details["attempts"] == 3
    assert "history" in assessor.requests[2].messages[-1]["content"]  # told which field was wrong
    assert all(r.response_schema == rubric_schema() for r in assessor.requests)


@pytest.mark.asyncio
@pytest.mark.parametrize("reply", ['{"history": ' + "7" * 5000 + "}", "[" * 100_000 + "]" * 100_000],
                         ids=["number-past-the-digit-limit", "nested-too-deeply"])
async def test_an_assessment_json_cannot_parse_is_re_asked_not_raised(reply: str) -> None:
    assessor = ScriptedPlanner(lambda r: reply if r.call_index == 0 else json.dumps(SCORES), model="judge")
    outcome = await _run(_steps(DIAGNOSE), _replies("Double vision.", "Thanks [END]"))
    assessment = await assess(assessor, CASE, outcome)
    assert assessment.attempts == 2 and assessment.scores == RubricScores.model_validate(SCORES)


def test_the_assessor_sees_a_long_consultation_whole() -> None:
    """Twenty questions and answers near the doctor's 1,000-character reply bound: every turn reaches the assessor
    in full, the correct and final diagnoses included (not a 'truncated' note in place of the transcript)."""
    from medagent.simulators.assessor import assessment_messages

    turns = []
    for index in range(20):
        turns += [Turn(index=2 * index, speaker="doctor", action="ask", elapsed_s=0.0,
                       text=f"Q{index:02d} " + "how long has this been going on " * 30),
                  Turn(index=2 * index + 1, speaker="patient", action="answer", elapsed_s=0.0,
                       text=f"A{index:02d} " + "about a week, doctor " * 25)]
    turns.append(Turn(index=40, speaker="doctor", action="diagnose", text="Myasthenia gravis", elapsed_s=0.0))
    outcome = DialogueOutcome(case_id=CASE.case_id, turns=turns, stop_reason="diagnosis",
                              diagnosis_text="Myasthenia gravis", diagnosis="myasthenia gravis", leaks_redacted=0,
                              models={}, strategy="dialogue")
    prompt = assessment_messages(CASE, outcome)[1]["content"]
    assert "truncated" not in prompt and "more characters" not in prompt
    assert "Correct diagnosis: Myasthenia gravis" in prompt and "Doctor (diagnosis): Myasthenia gravis" in prompt
    assert all(f"Q{index:02d}" in prompt and f"A{index:02d}" in prompt for index in range(20))


@pytest.mark.asyncio
async def test_a_valid_assessment_parses_after_a_re_ask() -> None:
    assessor = ScriptedPlanner(lambda r: "{" if r.call_index == 0 else json.dumps(SCORES), model="judge")
    outcome = await _run(_steps(ASK, DIAGNOSE), _replies("Double vision.", "Yes.", "Thanks [END]"))
    assessment = await assess(assessor, CASE, outcome)
    assert assessment.scores == RubricScores.model_validate(SCORES)
    assert assessment.attempts == 2 and assessment.model == "judge"
    prompt = assessor.requests[0].messages[1]["content"]
    assert "Correct diagnosis: Myasthenia gravis" in prompt and "Doctor (diagnosis): myasthenia gravis" in prompt


def test_personas_are_data_with_five_axes_and_known_biases() -> None:
    assert list(temperament_profiles()) == ["sanguine", "choleric", "melancholic", "phlegmatic"]
    assert all(all(profile.axes()[axis] for axis in AXES) for profile in temperament_profiles().values())
    kinds = {bias.name: bias.kind for bias in patient_biases().values()}
    assert {n for n, k in kinds.items() if k == "cognitive"} == {
        "recency", "frequency", "false_consensus", "status_quo", "confirmation", "self_diagnosis"}
    assert {n for n, k in kinds.items() if k == "implicit"} == {
        "gender", "race", "sexual_orientation", "cultural", "education", "religion", "socioeconomic"}
    with pytest.raises(UnknownPersona, match="sanguine, choleric"):
        temperament_profile("cheerful")
    with pytest.raises(UnknownPersona, match="recency"):
        patient_bias("optimism")


@pytest.mark.asyncio
async def test_temperament_and_bias_text_reach_the_patient_prompt() -> None:
    planner = _replies("Double vision, and I want it fixed now.", "Yes.")
    patient = SimulatedPatient(planner, CASE, temperament="choleric", biases=["self_diagnosis", "cultural"])
    opening = await patient.respond([])
    await patient.respond([Turn(index=0, speaker="patient", action="answer", text=opening.text, elapsed_s=0),
                           Turn(index=1, speaker="doctor", action="ask", text="Since when?", elapsed_s=0)])
    system = planner.requests[1].messages[0]["content"]
    choleric = temperament_profile("choleric")
    assert all(text in system for text in choleric.axes().values()) and "choleric" in system
    assert patient_bias("self_diagnosis").instruction in system and patient_bias("cultural").instruction in system
    facts = planner.requests[1].messages[1]["content"]  # case facts: fenced data in a user turn, not the system's
    assert "graphic designer" in facts and "Difficulty climbing stairs" in facts and "graphic designer" not in system
    assert choleric.treatment_attitude in planner.requests[0].messages[0]["content"]  # in character from the start
    with pytest.raises(UnknownPersona):
        SimulatedPatient(planner, CASE, biases=["optimism"])


def _turn(index: int, action: str, text: str) -> Turn:
    return Turn.model_validate({"index": index, "speaker": "doctor", "action": action, "text": text, "elapsed_s": 0})


@pytest.mark.parametrize(("turns", "expected"), [
    ([_turn(0, "diagnose", "Myasthenia-Gravis")], "myasthenia gravis"),
    ([_turn(0, "ask", "Hmm.\nDIAGNOSIS READY: autoimmune myasthenia")], "myasthenia gravis"),
    ([_turn(0, "diagnose", "probably Lambert Eaton myasthenic syndrome")], "lambert-eaton syndrome"),
    ([_turn(0, "diagnose", "None")], "none"),
    ([_turn(0, "diagnose", "influenza")], None),
    ([_turn(0, "ask", "Any fever?")], None),
])
def test_diagnoses_are_extracted_and_normalised_with_synonyms(turns: list[Turn], expected: str | None) -> None:
    assert extract_diagnosis(turns, LABELS) == expected


@pytest.mark.asyncio
async def test_a_turn_that_times_out_stops_the_dialogue_with_timeout() -> None:
    async def slow(request: PlannerRequest) -> str:
        await asyncio.sleep(5)
        return json.dumps(ASK)

    outcome = await _run(ScriptedPlanner(slow), _replies("Double vision."), turn_timeout_s=0.05)
    assert outcome.stop_reason == "timeout" and outcome.timed_out == "doctor"
    assert [t.speaker for t in outcome.turns] == ["patient"]


@pytest.mark.asyncio
async def test_a_planner_read_timeout_also_ends_the_dialogue_with_timeout() -> None:
    def patient(request: PlannerRequest) -> str:
        if request.call_index == 1:
            raise PlannerTimeout("planner server did not answer within 30 s")
        return "Double vision."

    outcome = await _run(_steps(ASK), ScriptedPlanner(patient))
    assert outcome.stop_reason == "timeout" and outcome.timed_out == "patient"
    assert [(t.speaker, t.action) for t in outcome.turns] == [("patient", "answer"), ("doctor", "ask")]


@pytest.mark.asyncio
async def test_the_whole_dialogue_timeout_stops_a_chatty_dialogue() -> None:
    async def patient(request: PlannerRequest) -> str:
        await asyncio.sleep(0.04)
        return "Still double."

    outcome = await _run(_steps(ASK), ScriptedPlanner(patient), max_turns=50, dialogue_timeout_s=0.3)
    assert outcome.stop_reason == "timeout" and outcome.timed_out == "patient" and 2 <= len(outcome.turns) < 30
    assert outcome.elapsed_s < 1.0


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", ["one_shot", "dialogue", "dialogue_with_experts"])
async def test_hints_and_images_reach_the_doctor_from_the_first_turn(strategy: str) -> None:
    doctor = _steps(DIAGNOSE)
    hints = [ExpertHint(label=label, probability=p, tool="neuro_classifier")
             for label, p in [("ocular myopathy", 0.1), ("myasthenia gravis", 0.8), ("stroke", 0.3), ("ms", 0.2)]]
    await run_dialogue(CASE, doctor=DoctorAgent(doctor, label_set=LABELS),
                       patient=SimulatedPatient(_replies("Double vision.", "Bye [END]"), CASE),
                       measurement=MeasurementAgent(_replies("-"), CASE), label_set=LABELS,
                       settings=DialogueSettings.model_validate({"strategy": strategy, "top_k": 2}), hints=hints,
                       image_summaries={"img-1": {"modality": "MR", "body_part": "orbit"}})
    brief = json.loads(doctor.requests[0].messages[1]["content"].split("```json\n")[1].split("\n```")[0])
    assert brief["images_available_now"] == {"img-1": {"modality": "MR", "body_part": "orbit"}}
    shown = [hint["label"] for hint in brief.get("expert_top_predictions", [])]
    assert shown == (["myasthenia gravis", "stroke"] if strategy == "dialogue_with_experts" else [])


@pytest.mark.asyncio
async def test_humans_can_play_doctor_and_patient_without_turn_timeouts() -> None:
    def scripted(answers: list[str], prompts: list[str]) -> Callable[[str], Awaitable[str]]:
        async def ask(prompt: str) -> str:
            prompts.append(prompt)
            await asyncio.sleep(0.05)  # slower than the model turn timeout below
            return answers.pop(0)
        return ask

    doctor_prompts: list[str] = []
    doctor = HumanDoctor(scripted(["How long?", "test: blood tests", "diagnosis: flu", "diagnosis: MG"],
                                  doctor_prompts))
    patient = HumanPatient(scripted(["I see double.", "A month.", "Thank you [END]"], []))
    outcome = await run_dialogue(CASE, doctor=doctor, patient=patient,
                                 measurement=MeasurementAgent(_replies("RESULTS: antibodies elevated"), CASE),
                                 label_set=LABELS, settings=DialogueSettings(turn_timeout_s=0.01))
    assert [(t.speaker, t.action) for t in outcome.turns] == [
        ("patient", "answer"), ("doctor", "ask"), ("patient", "answer"), ("doctor", "request_test"),
        ("measurement", "answer"), ("doctor", "diagnose"), ("patient", "stop")]
    assert outcome.diagnosis == "myasthenia gravis" and outcome.models["doctor"] == "human"
    assert "Allowed diagnoses" in doctor_prompts[0] and "Not an allowed diagnosis" in doctor_prompts[3]
    assert doctor_prompts[2].startswith("Measurement: RESULTS: antibodies elevated")


@pytest.mark.asyncio
async def test_a_written_opening_is_said_verbatim_without_a_model_call() -> None:
    facts = CASE.patient.model_copy(update={"opening": "I keep seeing two of everything."})
    written = CASE.model_copy(update={"patient": facts})
    planner = _replies("should not be called")
    reply = await SimulatedPatient(planner, written).respond([])
    assert reply.text == "I keep seeing two of everything." and reply.model is None and planner.requests == []


@pytest.mark.asyncio
async def test_a_speaker_taking_another_roles_action_is_a_wiring_error() -> None:
    async def leave(prompt: str) -> str:
        return "/end"

    assert (await HumanPatient(leave).respond([])).action == "stop"

    class Confused(HumanPatient):
        async def respond(self, turns: list[Turn]) -> Reply:
            return Reply(action="diagnose", text="none")

    with pytest.raises(SpeakerProtocolError, match="the patient replied with action 'diagnose'"):
        await run_dialogue(CASE, doctor=DoctorAgent(_steps(ASK)), patient=Confused(leave),
                           measurement=MeasurementAgent(_replies("-"), CASE), label_set=None,
                           settings=DialogueSettings())
