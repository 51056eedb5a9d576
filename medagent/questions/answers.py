"""A planner's reply -> the answer it gives, or a recorded reason why it gives none.

Order (the first that applies decides): ``<think>`` reasoning is dropped; then the committed forms, the last of
each kind: a JSON object with ``answer`` (the schema-constrained reply), ``<answer>...</answer>``, ``\\boxed{}``;
then the last explicit statement ("the answer is C", "Answer: (c)", "I would choose B", "答案是B"); then a lone
letter opening the reply ("B", "(B)", "b)", "B. Pneumonia"); then refusals; then a lone letter opening the last
line, the exact text of one option, yes/no for yes/no questions, and "(B)"/"option B" anywhere.

A reply naming two different options ("A or C", "both B and D") or refusing ("I cannot determine", "as an AI")
is unparsed with a reason, never counted right or wrong. A negated option is not named: "the answer is not A but
C" gives C. Only ``MAX_REPLY_CHARS`` are read (the first and last halves of a longer reply).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from typing import Any, Literal, cast

from pydantic import BaseModel

from medagent.questions.model import Question

MAX_REPLY_CHARS = 16_384
# the open answer's maxLength: llama.cpp's grammar parser refuses a string bound above about 1000 characters (its
# repetition limit) and the embedded server then crashes; short-answer benchmarks need far less
MAX_OPEN_ANSWER_CHARS = 512
MAX_SCANNED_CHARS = 1_048_576  # a reasoning block is searched for in at most this much of a reply
Method = Literal["json", "tag", "boxed", "letter", "option_text", "yes_no", "open", "unparsed"]
_YES_NO = {"yes": "yes", "yeah": "yes", "yep": "yes", "no": "no", "nope": "no", "有": "yes", "无": "no"}
_YES_NO_PREFIX = {"是": "yes", "对": "yes", "否": "no", "不是": "no", "没有": "no"}  # Chinese runs without spaces


class ParsedAnswer(BaseModel):
    """``value``: an option letter, ``yes``/``no``, or an open answer's text; ``reason`` says why there is none
    (empty, refusal, two options, no option, unfinished reasoning)."""

    value: str | None
    parsed: bool
    method: Method
    reason: str | None = None


def choice_schema(question: Question) -> dict[str, Any]:
    """The JSON schema a constrained reply follows (vLLM guided JSON, llama.cpp json_schema)."""
    answer: dict[str, Any]
    if question.kind == "choice":
        answer = {"type": "string", "enum": list(question.options)}
    elif _gold_yes_no(question) is not None:
        answer = {"type": "string", "enum": ["yes", "no"]}
    else:
        answer = {"type": "string", "minLength": 1, "maxLength": MAX_OPEN_ANSWER_CHARS}
    return {"type": "object", "properties": {"answer": answer}, "required": ["answer"], "additionalProperties": False}


def _gold_yes_no(question: Question) -> str | None:
    if question.options:
        return None
    gold = unicodedata.normalize("NFKC", question.answer).strip().casefold()
    return "yes" if gold in ("yes", "是") else "no" if gold in ("no", "否") else None


_THINK_OPEN, _THINK_CLOSE = re.compile(r"<think>", re.IGNORECASE), re.compile(r"</think>", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?")
_TAG = re.compile(r"<answer>(.{0,2000}?)</answer>", re.IGNORECASE | re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{")
_TEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]{0,500})\}")
_STATEMENT = re.compile(
    r"(?:\b(?:final\s+|correct\s+|best\s+|right\s+|most\s+likely\s+)?(?:answer|option|choice)\s*"
    r"(?:is|would\s+be|should\s+be|will\s+be)\s*(?::\s*)?|\b(?:final\s+)?answer\s*[:=\-]\s*"
    r"|\bI(?:'d|\s+would|\s+will)?\s+(?:choose|select|pick|go\s+with)\s+"
    r"|答案\s*(?:是|为|:)\s*|选择?\s*(?=[A-Za-z(]))(?=(?P<span>[^\n]{0,300}))", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?;。！？；](?:\s|$)")
_LETTER_ALONE = re.compile(r"^(?:(?:option|choice|answer|letter)\s*)?[(\[]?\s*([A-Za-z])\s*[)\]]?[.:]?$",
                           re.IGNORECASE)
_LETTER_LEAD = re.compile(
    r"^(?:(?:option|choice|answer|letter)\s*[:\-]?\s*)?(?:(?:[(\[]([A-Z])[)\]]|([A-Z])[.):\]])(?=\s|$)"
    r"|([A-Z])(?=\s+(?:is|would\s+be|seems)\s+(?:the\s+)?(?:correct|right|best|most\s+likely|answer)\b))",
    re.IGNORECASE)
_LETTER_TOKEN = re.compile(r"(?<![\w'’])(?:[(\[]([A-Z])[)\]]|(?:option|choice)\s+\(?([A-Z])\b|"
                           r"([A-Z])(?=[.,;:)]|\s*$|\s+(?:or|and|&|/)\s|/)|"
                           r"(?:(?<=\bor\s)|(?<=\band\s))((?-i:[A-Z]))(?!\w))", re.IGNORECASE)
_LETTER_THEN_WORD = re.compile(r"[A-Z]\s+(?!(?:or|and|nor)\b)[a-z]")  # a statement's "... is D because ..."
_STRICT_TOKEN = re.compile(r"(?<![\w'’])(?:[(\[]([A-Z])[)\]]|(?i:option|choice)\s+\(?([A-Za-z])\b)")
_NEGATED = re.compile(r"\b(?:not|isn'?t|rather\s+than|instead\s+of|except|other\s+than)\s+"
                      r"(?:option\s+|choice\s+)?[(\[]?[A-Z][)\]]?(?![\w])", re.IGNORECASE)
_REFUSAL = re.compile(
    r"\bas an (?:ai|language model)\b|\bI(?:'m|’m| am) sorry\b|\bI(?:'m|’m| am) (?:unable|not able) to\b"
    r"|\bI (?:cannot|can't|can’t|can not|could not|couldn't) (?:determine|answer|provide|tell|say|see|view|access"
    r"|interpret|diagnose|identify|be (?:certain|sure)|give|make|assess|evaluate)\b"
    r"|\b(?:cannot|can't|can not) be (?:determined|answered|assessed)\b"
    r"|\b(?:unable|impossible|not possible) to (?:determine|tell|say|answer)\b"
    r"|\b(?:insufficient|not enough) information\b|\bno image (?:was|is|has been) (?:provided|attached|shown|uploaded)\b"
    r"|无法(?:确定|判断|回答|看到)|不能(?:确定|判断)|不确定|抱歉|对不起", re.IGNORECASE)
_NEGATION_BEFORE = re.compile(r"\b(?:not|no|without|rather than|instead of|except)\s*$")


def extract_answer(reply: str, question: Question) -> ParsedAnswer:
    """The answer ``reply`` gives to ``question`` and how it was read; never raises on any text."""
    text, unfinished = _visible_text(reply if isinstance(reply, str) else "")
    if unfinished:
        return _unparsed("unfinished reasoning")
    if not text.strip():
        return _unparsed("empty")
    for method, committed in (("json", _json_answer(text)), ("tag", _last_tag(text)), ("boxed", _last_boxed(text))):
        if committed is not None:
            value, how = _interpret(committed, question)
            return _answer(value, method if value else how)
    for match in reversed(list(_STATEMENT.finditer(text))[-8:]):  # the last statement that names an answer
        span = match.group("span")
        end = _SENTENCE_END.search(span, 1)
        value, how = _interpret(span[: end.start() + 1] if end else span, question)
        if value or how == "two options":
            return _answer(value, how)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if question.kind == "choice":
        return _free_choice(text, lines, question)
    if _REFUSAL.search(text):
        return _unparsed("refusal")
    if _gold_yes_no(question) is not None:
        value, how = _yes_no(lines[0])
        if not value and how == "no option" and len(lines) > 1:
            value, how = _yes_no(lines[-1])
        return _answer(value, how)
    return _answer(_clean_open(text), "open")


def _answer(value: str | None, how: str) -> ParsedAnswer:
    """``how``: the method when there is a value, else the reason there is none."""
    if value:
        return ParsedAnswer(value=value, parsed=True, method=cast(Method, how))
    return _unparsed(how)


def _free_choice(text: str, lines: list[str], question: Question) -> ParsedAnswer:
    """A multiple-choice reply without a committed form or an explicit statement."""
    lead = _lead_letter(lines[0], question)
    echoed_list = len(lines) > 1 and _lead_letter(lines[1], question) not in (None, lead)
    if lead and not echoed_list:
        return _answer(lead, "letter")
    if _REFUSAL.search(text):
        return _unparsed("refusal")
    if lead:
        return _unparsed("two options")
    last = _lead_letter(lines[-1], question)
    if last:
        return _answer(last, "letter")
    first_sentence = _SENTENCE_END.split(lines[0], maxsplit=1)[0]
    for span, contain in ((text, False), (first_sentence, True), (lines[0], True)):
        value, how = _option_text(span, question, contain=contain)
        if value or how:
            return _answer(value, "option_text" if value else how or "")
    if len(lines[0]) <= 300:  # "it could be A or C", "B and D", "It is B, not A."
        value, how = _letters(lines[0], question, _LETTER_TOKEN)
        if value or how == "two options":
            return _answer(value, how)
    value, how = _letters(text, question, _STRICT_TOKEN)
    return _answer(value, how)


def _letters(span: str, question: Question, pattern: re.Pattern[str]) -> tuple[str | None, str]:
    """The one option letter ``pattern`` finds in ``span`` (negated letters left out), or why not."""
    named = {next(part for part in parts if part).upper() for parts in pattern.findall(_NEGATED.sub(" ", span))}
    named &= set(question.options)
    if len(named) == 1:
        return named.pop(), "letter"
    return None, "two options" if named else "no option"


def _interpret(span: str, question: Question) -> tuple[str | None, str]:
    """A short span (a committed answer, a statement's object) -> (value, method) or (None, reason)."""
    span = span.strip().strip("*_`\"'").strip()
    if not span:
        return None, "empty"
    if question.kind != "choice":
        if _REFUSAL.search(span):  # a constrained open answer can still be "unable to determine"
            return None, "refusal"
        return _yes_no(span) if _gold_yes_no(question) is not None else (_clean_open(span), "open")
    alone = _LETTER_ALONE.match(span)
    if alone:
        letter = alone.group(1).upper()
        return (letter, "letter") if letter in question.options else (None, "no option")
    lead = _lead_letter(span, question) or (span[0] if _LETTER_THEN_WORD.match(span) else None)
    if lead in question.options:
        return lead, "letter"
    value, how = _option_text(span, question, contain=True)
    if value or how:
        return value, how or "option_text"
    return _letters(span, question, _LETTER_TOKEN)


def _lead_letter(line: str, question: Question) -> str | None:
    """The option letter opening a line ("B.", "(b)", "Option C:", "C is correct") or followed by that option's
    own text ("B Pneumonia")."""
    line = line.strip().strip("*_`#>").strip()
    match = _LETTER_ALONE.match(line) or _LETTER_LEAD.match(line)
    letter = next((group for group in match.groups() if group), "").upper() if match else ""
    if not letter and len(line) > 2 and line[0] in question.options and line[1] == " ":
        rest, option = _normal(line[2:]), _normal(question.options[line[0]])
        letter = line[0] if option and f"{rest} ".startswith(f"{option} ") else ""
    return letter if letter in question.options else None


def _option_text(span: str, question: Question, *, contain: bool) -> tuple[str | None, str | None]:
    """(letter, None) when ``span`` is (``contain``: or names) exactly one option's text; (None, "two options")
    when it names several; (None, None) when it names none. A negated mention ("no pneumonia") names nothing."""
    normal = _normal(span)
    options = {letter: _normal(text) for letter, text in question.options.items()}
    exact = [letter for letter, text in options.items() if text and text == normal]
    if len(exact) == 1 or not contain:
        return (exact[0] if len(exact) == 1 else None), None
    found: list[tuple[int, int, str]] = []
    padded = f" {normal} "
    for letter, text in options.items():
        start = padded.find(f" {text} ") if text else -1
        if start >= 0 and not _NEGATION_BEFORE.search(padded[max(0, start - 24): start + 1]):
            found.append((start, start + len(text) + 1, letter))
    # an option whose text lies inside a longer named option's text ("effusion" in "pleural effusion") is not named
    named = {letter for start, end, letter in found
             if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in found)}
    if len(named) == 1:
        return named.pop(), None
    return None, "two options" if len(named) > 1 else None


def _yes_no(span: str) -> tuple[str | None, str]:
    words = _normal(span).split()
    if not words:
        return None, "empty"
    if words[0] in ("yes", "no") and {"yes", "no"} <= set(words[:3]):  # "yes or no", "yes/no"
        return None, "two options"
    first = words[0]
    if first in _YES_NO:
        return _YES_NO[first], "yes_no"
    prefix = next((form for form in sorted(_YES_NO_PREFIX, key=len, reverse=True) if first.startswith(form)), None)
    return (_YES_NO_PREFIX[prefix], "yes_no") if prefix else (None, "no option")


def _visible_text(reply: str) -> tuple[str, bool]:
    """The reply without its reasoning block, bounded; True when the reasoning never closes."""
    if len(reply) > MAX_SCANNED_CHARS:
        reply = f"{reply[: MAX_SCANNED_CHARS // 2]}\n{reply[-MAX_SCANNED_CHARS // 2:]}"
    close = None
    for close in _THINK_CLOSE.finditer(reply):
        pass
    opened = _THINK_OPEN.search(reply)
    if close is not None:
        reply = reply[close.end():]
    elif opened is not None:
        if not reply[: opened.start()].strip():
            return "", True
        reply = reply[: opened.start()]
    for _ in range(2):  # NFKC can lengthen text (one ligature -> 18 characters): bound before and after
        if len(reply) > MAX_REPLY_CHARS:
            reply = f"{reply[: MAX_REPLY_CHARS // 2]}\n{reply[-MAX_REPLY_CHARS // 2:]}"
        reply = unicodedata.normalize("NFKC", reply)
    return reply.replace("**", ""), False


def _json_answer(text: str) -> str | None:
    decoder = json.JSONDecoder()
    cleaned = _FENCE.sub(" ", text)
    found: str | None = None
    for attempt, match in enumerate(re.finditer(r"\{", cleaned)):
        if attempt >= 32:
            break
        try:
            obj, _ = decoder.raw_decode(cleaned, match.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            answer = next((value for key, value in obj.items() if str(key).casefold() == "answer"), None)
            if isinstance(answer, list) and len(answer) > 1:
                found = " or ".join(str(item) for item in answer[:8])
            elif isinstance(answer, (str, int, float, bool)) or (isinstance(answer, list) and answer):
                found = str(answer[0] if isinstance(answer, list) else answer)
                found = {"True": "yes", "False": "no"}.get(found, found)
    return found


def _last_tag(text: str) -> str | None:
    tags = _TAG.findall(text)
    return tags[-1] if tags else None


def _last_boxed(text: str) -> str | None:
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for index in range(start, min(len(text), start + 2000)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            inner = text[start:index]
            for _ in range(3):
                inner = _TEX_WRAPPER.sub(r"\1", inner)
            return inner
    return None


def _clean_open(text: str) -> str:
    return text.strip().strip("*_`\"'").strip().rstrip(".。").strip()[:MAX_OPEN_ANSWER_CHARS]


def _unparsed(reason: str) -> ParsedAnswer:
    return ParsedAnswer(value=None, parsed=False, method="unparsed", reason=reason)


def _normal(text: str) -> str:
    """Case-, width-, punctuation- and space-insensitive form of a short text."""
    text = unicodedata.normalize("NFKC", text[:MAX_REPLY_CHARS]).casefold()
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def is_correct(parsed: ParsedAnswer, question: Question) -> bool | None:
    """None for an unparsed reply; open questions: exact match after normalisation (articles dropped)."""
    if not parsed.parsed or parsed.value is None:
        return None
    if question.kind == "choice":
        return parsed.value == question.answer
    gold_yes_no = _gold_yes_no(question)
    if gold_yes_no is not None:
        return parsed.value == gold_yes_no
    return _tokens(parsed.value) == _tokens(question.answer)


def _tokens(text: str) -> list[str]:
    """Words (CJK: characters) of a normalised text, English articles dropped (as SQuAD's exact match)."""
    words = re.findall(r"[\u3400-\u9fff]|[^\W_\u3400-\u9fff]+", _normal(text))
    return [word for word in words if word not in ("a", "an", "the")]


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = _tokens(prediction), _tokens(gold)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not predicted or not expected or not common:
        return float(predicted == expected)
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str, gold: str) -> float:
    """The share of the gold answer's tokens the prediction contains (LLaVA-Med's open-question recall)."""
    predicted, expected = Counter(_tokens(prediction)), _tokens(gold)
    if not expected:
        return float(not predicted)
    return sum((predicted & Counter(expected)).values()) / len(expected)
