"""Property tests (hypothesis): generated YAML, manifests and planner replies meet the same invariant as the
mutation fuzzer: accepted, or refused with a typed MedagentError (the doctor parser's contract: ValueError)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medagent.errors import MedagentError

EXAMPLES = max(20, int(float(os.environ.get("MEDAGENT_FUZZ_BUDGET_S", "20")) * 5))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30)
yaml_text = st.lists(st.sampled_from(["a", "b:", " ", "  ", "- ", "&x ", "*x", "<<: ", "{", "}", "[", "]", ",",
                                      "\n", "'", '"', "? ", ": ", "1", "1e9", "!!str ", "~", "#", "|", ">"]),
                     max_size=60).map("".join)


def _typed(call: Any) -> Any:
    try:
        return call()
    except MedagentError as exc:
        return exc


@PROPERTY
@given(text=yaml_text | st.text(max_size=200))
def test_yaml_reader_returns_data_or_a_typed_error(text: str) -> None:
    from medagent.yaml_io import YamlLimits, load_yaml_string

    _typed(lambda: load_yaml_string(text, "p.yaml", YamlLimits(max_nodes=500, max_depth=8)))


@PROPERTY
@given(text=yaml_text)
def test_study_parser_returns_a_config_or_a_typed_error(text: str) -> None:
    from medagent.studies import parse_study

    _typed(lambda: parse_study("name: p\ngraph: {type: agent_loop, question: q}\n" + text, "p.yaml"))


@PROPERTY
@given(rows=st.lists(st.lists(st.text(max_size=20), min_size=0, max_size=5), max_size=6))
def test_manifest_rows_load_or_give_a_typed_error(rows: list[list[str]], tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    import csv

    from medagent.studies.datasets import ColumnMapping, DatasetSpec, load_dataset

    folder = tmp_path_factory.mktemp("manifest")
    with (folder / "m.csv").open("w", newline="", encoding="utf-8", errors="surrogatepass") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "path", "Cardiomegaly"])
        writer.writerows(rows)
    spec = DatasetSpec(type="manifest", path="m.csv", columns=ColumnMapping(case_id="case_id", labels=["Cardiomegaly"]))
    try:
        _typed(lambda: load_dataset(spec, folder))
    except UnicodeEncodeError:
        pass  # a lone surrogate cannot be written as UTF-8: not an input medagent can be given


QUESTION_LAYOUTS = ("manifest", "slake", "probmed", "chestagentbench", "medxpertqa_mm", "mediconfusion")


@PROPERTY
@given(records=st.lists(st.dictionaries(st.sampled_from(
    ["id", "image", "question", "answer", "options", "img_name", "q_lang", "qid", "img_id", "answer_type", "label",
     "images", "case_id", "qa_type", "image_type", "gt_ans", "question_id", "option_A", "option_B", "im_1_correct"]),
    json_values, max_size=8), max_size=4), layout=st.sampled_from(QUESTION_LAYOUTS))
def test_question_files_load_or_give_a_typed_error(records: list[dict[str, Any]], layout: str,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hostile question files of each JSON/JSONL layout: questions, or a typed error (skipping counts the rest)."""
    from medagent.imaging.deid import Deidentifier
    from medagent.questions.loading import load_questions

    folder = tmp_path_factory.mktemp("questions")
    name = {"manifest": "q.jsonl", "chestagentbench": "metadata.jsonl", "medxpertqa_mm": "test.jsonl",
            "slake": "test.json", "probmed": "test.json", "mediconfusion": "dataset.json"}[layout]
    if name.endswith(".jsonl"):
        text = "\n".join(json.dumps(record) for record in records)
    elif layout == "mediconfusion":
        text = json.dumps({f"s{index}": record for index, record in enumerate(records)})
    else:
        text = json.dumps(records)
    (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")
    for skip in (False, True):
        _typed(lambda: load_questions(folder / name, layout, image_cache=folder / "cache",  # noqa: B023
                                      deidentifier=Deidentifier(b"k" * 32), skip_malformed=skip))


def _planner(content: str) -> Any:
    from medagent.agents.scripted import ScriptedPlanner

    return ScriptedPlanner(lambda request: content)


@PROPERTY
@given(reply=json_values.map(json.dumps) | st.text(max_size=200))
def test_doctor_reply_gives_a_step_or_a_typed_error(reply: str) -> None:
    from medagent.agents.doctor import DoctorAgent
    from medagent.simulators.builtin import builtin_label_set

    agent = DoctorAgent(_planner(reply), label_set=builtin_label_set(), max_reasks=0)
    _typed(lambda: asyncio.run(agent.respond([], final=False)))


@PROPERTY
@given(call=json_values)
def test_structured_step_gives_a_turn_or_a_typed_error(call: Any) -> None:
    """(Replies nested past the JSON parser's depth are read as the planner's text; tests/fuzz/corpus replays one.)"""
    from medagent.workflows.agent_loop import AgentLoop

    tools = [{"type": "function", "function": {"name": "t", "description": "d", "parameters": {
        "type": "object", "properties": {}}}}]
    reply = json.dumps({"call": call})
    loop = AgentLoop.__new__(AgentLoop)
    loop.planner = _planner(reply)
    _typed(lambda: asyncio.run(loop._structured_turn([{"role": "user", "content": "q"}], tools, 0)))

