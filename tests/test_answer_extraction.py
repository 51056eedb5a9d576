"""Answer extraction on a table of real-looking planner replies, the constrained-choice schema, correctness and
token scores, and properties on arbitrary text (never raises, bounded time, a bare letter is always read)."""

from __future__ import annotations

import json
import string
import time

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medagent.questions.answers import (
    MAX_OPEN_ANSWER_CHARS,
    ParsedAnswer,
    choice_schema,
    extract_answer,
    is_correct,
    token_f1,
    token_recall,
)
from medagent.questions.model import Question

QUESTIONS = {
    "choice": Question(question_id="q1", question="What is the main finding?", answer="B", options={
        "A": "Cardiomegaly", "B": "Pleural effusion", "C": "Pneumothorax", "D": "Normal chest radiograph"}),
    "yes_no": Question(question_id="q2", question="Is there a pleural effusion?", answer="yes"),
    "zh": Question(question_id="q3", question="图中有胸腔积液吗？", answer="是", language="zh"),
    "open": Question(question_id="q4", question="Where is the lesion?", answer="left lower lobe"),
}

# (reply, question, expected value or None, method when parsed / reason when not)
REPLIES: list[tuple[str, str, str | None, str]] = [
    ("B", "choice", "B", "letter"),
    ("b", "choice", "B", "letter"),
    ("(B)", "choice", "B", "letter"),
    ("B.", "choice", "B", "letter"),
    ("B)", "choice", "B", "letter"),
    ("Ｂ", "choice", "B", "letter"),
    ("**B**", "choice", "B", "letter"),
    ("B. Pleural effusion", "choice", "B", "letter"),
    ("(C) Pneumothorax is seen at the right apex.", "choice", "C", "letter"),
    ("c) pneumothorax", "choice", "C", "letter"),
    ("Option C", "choice", "C", "letter"),
    ("C is correct.", "choice", "C", "letter"),
    ("B Pleural effusion, given the blunted left costophrenic angle.", "choice", "B", "letter"),
    ("B\n\nExplanation: option A is wrong because the heart size is normal.", "choice", "B", "letter"),
    ("The answer is C.", "choice", "C", "letter"),
    ("Answer: d", "choice", "D", "letter"),
    ("**Answer:** (a)", "choice", "A", "letter"),
    ("The correct answer is (A) Cardiomegaly.", "choice", "A", "letter"),
    ("I would choose D because the lungs are clear.", "choice", "D", "letter"),
    ("Findings: the costophrenic angles are blunted.\nFinal answer: B", "choice", "B", "letter"),
    ("The answer is A. Wait, on reflection the cardiac size is normal, so the answer is C.", "choice", "C", "letter"),
    # decided: a negated option is not named, the other one is the answer
    ("The answer is not A but C.", "choice", "C", "letter"),
    ("It is B, not A.", "choice", "B", "letter"),
    ("答案是B", "choice", "B", "letter"),
    ("Looking at the film...\nThe heart is enlarged.\nA", "choice", "A", "letter"),
    ("Pleural effusion", "choice", "B", "option_text"),
    ("pleural   EFFUSION.", "choice", "B", "option_text"),
    ("Cardiomegaly. The cardiac silhouette is enlarged, unlike in a pleural effusion.", "choice", "A", "option_text"),
    ("The most likely diagnosis is pleural effusion, as the angle is blunted.", "choice", "B", "option_text"),
    ("There is no pleural effusion; the heart is enlarged, consistent with cardiomegaly.", "choice", "A",
     "option_text"),
    ("\\boxed{B}", "choice", "B", "boxed"),
    ("The costophrenic angle is blunted. Therefore the final answer is $\\boxed{\\text{C}}$.", "choice", "C", "boxed"),
    ("<answer>A</answer>", "choice", "A", "tag"),
    ("Reasoning: ...\n<answer> (D) Normal chest radiograph </answer>", "choice", "D", "tag"),
    ('{"answer": "B"}', "choice", "B", "json"),
    ('```json\n{"answer": "C"}\n```', "choice", "C", "json"),
    ('Sure! {"Answer": "pleural effusion"}', "choice", "B", "json"),
    ("<think>Option A and C are unlikely; the angle is blunted.</think>\nB", "choice", "B", "letter"),
    ("<think>The heart is large so probably A, but", "choice", None, "unfinished reasoning"),
    ("I cannot determine the answer from this image.", "choice", None, "refusal"),
    ("As an AI language model, I am not able to provide medical diagnoses.", "choice", None, "refusal"),
    ("I'm sorry, but I can't help with that.", "choice", None, "refusal"),
    ("A or C", "choice", None, "two options"),
    ("Both B and D are possible.", "choice", None, "two options"),
    ("The answer is A or C.", "choice", None, "two options"),
    ("The image is not clear enough; it could be A or C.", "choice", None, "two options"),
    ('{"answer": ["A", "C"]}', "choice", None, "two options"),
    ("A. Cardiomegaly\nB. Pleural effusion\nC. Pneumothorax\nD. Normal chest radiograph", "choice", None,
     "two options"),
    ("Cardiomegaly or pneumothorax.", "choice", None, "two options"),
    ("E", "choice", None, "no option"),
    ('{"answer": "E"}', "choice", None, "no option"),
    ("A chest radiograph is shown.", "choice", None, "no option"),
    ("", "choice", None, "empty"),
    ("  \n\t ", "choice", None, "empty"),
    ("<think>long reasoning</think>", "choice", None, "empty"),
    ("Yes", "yes_no", "yes", "yes_no"),
    ("yes, there is a moderate left pleural effusion.", "yes_no", "yes", "yes_no"),
    ("No.", "yes_no", "no", "yes_no"),
    ("NO", "yes_no", "no", "yes_no"),
    ("The answer is yes.", "yes_no", "yes", "yes_no"),
    ('{"answer": "no"}', "yes_no", "no", "json"),
    ("<answer>Yes</answer>", "yes_no", "yes", "tag"),
    ("The costophrenic angle is blunted.\n\nYes", "yes_no", "yes", "yes_no"),
    ("Yes or no cannot be determined from this image.", "yes_no", None, "refusal"),
    ("Yes/no", "yes_no", None, "two options"),
    ("There is a small effusion.", "yes_no", None, "no option"),
    ("是", "zh", "yes", "yes_no"),
    ("是的，可以看到胸腔积液。", "zh", "yes", "yes_no"),
    ("否", "zh", "no", "yes_no"),
    ("不是", "zh", "no", "yes_no"),
    ("没有", "zh", "no", "yes_no"),
    ("无法确定", "zh", None, "refusal"),
    ("Left lower lobe.", "open", "Left lower lobe", "open"),
    ("The answer is the left lower lobe.", "open", "the left lower lobe", "open"),
    ('{"answer": "right upper lobe"}', "open", "right upper lobe", "json"),
    ("<think>Opacity at the left base.</think>left lower lobe", "open", "left lower lobe", "open"),
    ("I cannot determine the location from this image.", "open", None, "refusal"),
    ('{"answer": "Unable to determine from the image"}', "open", None, "refusal"),
    ("The correct option is B.", "choice", "B", "letter"),
    ("Final Answer: C\n\nA and B are less likely given the clear apices.", "choice", "C", "letter"),
    ("Based on the findings, a pneumothorax (C) is most likely.", "choice", "C", "option_text"),
]


@pytest.mark.parametrize(("reply", "kind", "value", "how"), REPLIES)
def test_real_looking_replies(reply: str, kind: str, value: str | None, how: str) -> None:
    parsed = extract_answer(reply, QUESTIONS[kind])
    if value is None:
        assert (parsed.parsed, parsed.value, parsed.method, parsed.reason) == (False, None, "unparsed", how)
        assert is_correct(parsed, QUESTIONS[kind]) is None  # never silently right or wrong
    else:
        assert (parsed.parsed, parsed.value, parsed.method) == (True, value, how)


def test_correctness_per_kind() -> None:
    choice, yes_no, zh, open_question = (QUESTIONS[k] for k in ("choice", "yes_no", "zh", "open"))
    assert is_correct(extract_answer("B", choice), choice) is True
    assert is_correct(extract_answer("A", choice), choice) is False
    assert is_correct(extract_answer("Yes.", yes_no), yes_no) is True
    assert is_correct(extract_answer("no", yes_no), yes_no) is False
    assert is_correct(extract_answer("是的", zh), zh) is True and is_correct(extract_answer("Yes", zh), zh) is True
    assert is_correct(extract_answer("否", zh), zh) is False
    assert is_correct(extract_answer("The Left-Lower LOBE!", open_question), open_question) is True
    assert is_correct(extract_answer("left upper lobe", open_question), open_question) is False


def test_token_scores() -> None:
    assert token_f1("left lower lobe", "the left lower lobe") == 1.0
    assert token_f1("left upper lobe", "left lower lobe") == pytest.approx(2 / 3)
    assert token_f1("right", "left lower lobe") == 0.0
    assert token_recall("the opacity is in the left lower lobe", "left lower lobe") == 1.0
    assert token_recall("lower lobe", "left lower lobe") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_recall("anything", "") == 0.0
    assert token_f1("肺部", "肺") == pytest.approx(2 / 3)  # CJK text scores by character


def test_the_schema_admits_exactly_the_valid_answers() -> None:
    choice = choice_schema(QUESTIONS["choice"])
    assert choice["properties"]["answer"]["enum"] == ["A", "B", "C", "D"] and choice["required"] == ["answer"]
    jsonschema.validate({"answer": "C"}, choice)
    for invalid in ({"answer": "E"}, {"answer": "C", "why": "x"}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(invalid, choice)
    for kind in ("yes_no", "zh"):
        assert choice_schema(QUESTIONS[kind])["properties"]["answer"]["enum"] == ["yes", "no"]
    open_schema = choice_schema(QUESTIONS["open"])
    jsonschema.validate({"answer": "left lower lobe"}, open_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"answer": "x" * (MAX_OPEN_ANSWER_CHARS + 1)}, open_schema)
    # a reply that follows the schema is always read back as what it says
    for letter in "ABCD":
        assert extract_answer(json.dumps({"answer": letter}), QUESTIONS["choice"]).value == letter


def test_a_long_reply_is_read_at_its_ends_only() -> None:
    padding = "The lung fields are assessed in turn. " * 20_000  # ~760k characters
    started = time.perf_counter()
    parsed = extract_answer(padding + "\nFinal answer: C", QUESTIONS["choice"])
    assert time.perf_counter() - started < 1.0
    assert (parsed.value, parsed.method) == ("C", "letter")
    assert extract_answer("x" * 5000, QUESTIONS["open"]).value == "x" * MAX_OPEN_ANSWER_CHARS


REPLY_TEXT = st.text(alphabet=st.sampled_from(list(string.printable) + list("（）是否答案：。<>{}\\")), max_size=400)


@settings(max_examples=300, deadline=None)
@given(reply=REPLY_TEXT, kind=st.sampled_from(sorted(QUESTIONS)))
def test_any_text_is_parsed_or_given_a_reason(reply: str, kind: str) -> None:
    started = time.perf_counter()
    parsed = extract_answer(reply, QUESTIONS[kind])
    assert time.perf_counter() - started < 0.5
    assert isinstance(parsed, ParsedAnswer)
    assert parsed.parsed == (parsed.value is not None) and parsed.parsed == (parsed.reason is None)
    if parsed.parsed and kind == "choice":
        assert parsed.value in QUESTIONS[kind].options
    if parsed.parsed and kind in ("yes_no", "zh"):
        assert parsed.value in ("yes", "no")


@settings(max_examples=100, deadline=None)
@given(prefix=st.sampled_from(["{", "[", "<think>", "\\boxed{", "<answer>", "answer is ", "(", "A or "]),
       count=st.integers(min_value=1, max_value=20_000))
def test_adversarial_repetition_stays_bounded(prefix: str, count: int) -> None:
    started = time.perf_counter()
    extract_answer(prefix * count, QUESTIONS["choice"])
    extract_answer(prefix * count, QUESTIONS["open"])
    assert time.perf_counter() - started < 1.0


@settings(max_examples=100, deadline=None)
@given(size=st.integers(min_value=2, max_value=26), data=st.data())
def test_a_reply_that_is_exactly_an_option_letter_parses_to_it(size: int, data: st.DataObject) -> None:
    letters = string.ascii_uppercase[:size]
    question = Question(question_id="q", question="Which?", answer="A",
                        options={letter: f"finding {index}" for index, letter in enumerate(letters)})
    letter = data.draw(st.sampled_from(letters))
    parsed = extract_answer(letter, question)
    assert (parsed.value, parsed.method) == (letter, "letter")
