"""Every YAML and data file medagent reads is bounded: aliases, size, nodes, depth, numbers that size work, rows.

Each hostile input is generated here; each must be refused with a typed, located error, fast and small.
"""

from __future__ import annotations

import csv
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medagent.dialogue.labels import LabelSet
from medagent.errors import ConfigurationError, MedagentError, ResourceExhausted
from medagent.reports.bootstrap import BootstrapConfig, CaseResampler
from medagent.simulators.agentclinic import load_agentclinic
from medagent.simulators.case_files import CaseFileError
from medagent.simulators.loaders import load_cases
from medagent.studies import load_study, parse_study
from medagent.yaml_io import YamlFileError, YamlLimits, load_yaml, load_yaml_string
from medagent.yaml_located import StudyConfigError
from tests.conftest import NIH_NO_FINDING

MAX_SECONDS = 1.0
MAX_PEAK_BYTES = 16 * 2**20

GRAPH = "graph:\n  type: agent_loop\n  question: what do you see?\n"


def billion_laughs(levels: int = 7, fanout: int = 9) -> str:
    """The classic alias bomb: level k (a..g) is a list of ``fanout`` aliases of level k-1 (9**7 = 4.8M strings)."""
    names = "abcdefg"[:levels]
    lines = [f"a: &a [{','.join(['lol'] * fanout)}]"]
    for level in range(1, levels):
        lines.append(f"{names[level]}: &{names[level]} [{','.join([f'*{names[level - 1]}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def fast_and_small(action: Callable[[], Any], error: type[MedagentError]) -> MedagentError:
    """Run ``action`` expecting ``error``, in under 1 s with a traced peak under 16 MB."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(MedagentError) as caught:
            action()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(caught.value, error), f"expected {error.__name__}, got {caught.value!r}"
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f} s"
    assert peak < MAX_PEAK_BYTES, f"peak {peak / 2**20:.1f} MiB"
    return caught.value


# -- aliases, size, nodes and depth, in every YAML reader -----------------------------------------------


def test_the_389_byte_alias_bomb_study_is_refused_fast_and_small(tmp_path: Path) -> None:
    bomb = "name: bomb\n" + GRAPH + billion_laughs() + "description: *g\n"
    assert len(bomb.encode()) <= 389
    study = tmp_path / "bomb.yaml"
    study.write_text(bomb)
    error = fast_and_small(lambda: load_study(study), StudyConfigError)
    assert error.file == "bomb.yaml" and error.line == 6 and "aliases" in error.message
    assert error.message.startswith("bomb.yaml:6: ")


def test_aliases_inside_kwargs_are_refused(tmp_path: Path) -> None:
    text = ("name: kw\n" + GRAPH + "planners:\n  planner:\n    backend:\n      _target_: medagent.agents.scripted.x\n"
            "      kwargs: {a: &k [1, 2], b: *k}\n")
    error = fast_and_small(lambda: parse_study(text, "kw.yaml"), StudyConfigError)
    assert error.line == 9 and "aliases" in error.message


def test_a_case_file_alias_bomb_is_refused(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(billion_laughs() + "cases: *g\n")
    error = fast_and_small(lambda: load_cases(cases), CaseFileError)
    assert error.file == "cases.yaml" and error.line == 2 and "aliases" in error.message


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_label_set_alias_bomb_or_deep_nesting_is_refused(tmp_path: Path, suffix: str) -> None:
    labels = tmp_path / f"labels{suffix}"
    labels.write_text(billion_laughs() + "name: x\nlabels: *g\n" if suffix == ".yaml"
                      else '{"name": "x", "labels": ' + "[" * 100_000 + "]" * 100_000 + "}")
    error = fast_and_small(lambda: LabelSet.from_file(labels), YamlFileError)
    assert error.file == labels.name


def test_merge_keys_and_anchors_without_aliases_still_load(tmp_path: Path) -> None:
    assert load_yaml_string("a: &x 1\nb: {<<: {c: 2}, d: 3}\n", "ok.yaml") == {"a": 1, "b": {"c": 2, "d": 3}}


@pytest.mark.parametrize(("text", "limits", "found"), [
    ("x: " + "[" * 100 + "]" * 100, YamlLimits(), "nested deeper than 64"),
    ("x: [" + ", ".join(["1"] * 300) + "]", YamlLimits(max_nodes=256), "more than 256 YAML nodes"),
    ("x: " + "y" * 2000, YamlLimits(max_bytes=1000), "larger than 1000 bytes"),
    ("a: 1\nb: 2\na: 3\n", YamlLimits(), "3: a: duplicate key (first given on line 1)"),
    ("? [1, 2]\n: 3\n", YamlLimits(), "a mapping key must be a plain value"),
    ("x: \x07\n", YamlLimits(), "invalid YAML"),
], ids=["depth", "nodes", "bytes", "duplicate", "unhashable-key", "control-character"])
def test_yaml_limits_each_refuse_with_file_and_line(text: str, limits: YamlLimits, found: str) -> None:
    error = fast_and_small(lambda: load_yaml_string(text, "f.yaml", limits), YamlFileError)
    assert error.message.startswith("f.yaml") and found in error.message


def test_file_size_is_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as stream:  # 20 MB of one scalar: never read past the cap
        stream.write("x: ")
        stream.write("y" * (20 * 2**20))
    error = fast_and_small(lambda: load_yaml(big, YamlLimits(max_bytes=2**20)), YamlFileError)
    assert "larger than 1048576 bytes" in error.message
    study = big.with_name("study.yaml")
    big.rename(study)
    assert fast_and_small(lambda: load_study(study), StudyConfigError).file == "study.yaml"


def test_personas_use_the_bounded_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    from medagent.simulators import personas

    personas.temperament_profiles.cache_clear()
    original = personas.load_yaml_string
    monkeypatch.setattr(personas, "load_yaml_string", lambda text, name: original(billion_laughs(), name))
    try:
        error = fast_and_small(personas.temperament_profiles, personas.PersonaDataInvalid)
        assert "temperaments.yaml" in error.message
    finally:
        personas.temperament_profiles.cache_clear()


# -- agentclinic JSONL: line length, encoding, nesting ----------------------------------------------------


@pytest.mark.parametrize(("content", "found"), [
    (b'{"a": "' + b"x" * (2 * 2**20) + b'"}\n', "longer than"),
    (b'{"OSCE_Examination": "\xff\xfe"}\n', "not UTF-8"),
    (b'{"OSCE_Examination": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n", "nested too deeply"),
    (b'{"OSCE_Examination": {"Patient_Actor": {"History": ' + b"[" * 990 + b'"h"' + b"]" * 990
     + b'}, "Correct_Diagnosis": "d"}}\n', ""),
    (b'{"OSCE_Examination": ' + b"7" * 5000 + b"}\n", "not valid JSON"),  # past Python's int digit limit
], ids=["long-line", "not-utf8", "deep-json", "deep-text", "long-number"])
def test_agentclinic_lines_are_bounded(tmp_path: Path, content: bytes, found: str) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_bytes(content)
    with pytest.raises(CaseFileError) as caught:
        load_agentclinic(path)
    assert caught.value.line == 1 and found in caught.value.message


# -- 3MDBench tables: line length, encoding, nesting, embedded bytes, image names ---------------------------


_3MD = b'{"general_complaint": "A rash", "complaints": "Itchy.", "diagnosis": "hives", "image": '


@pytest.mark.parametrize(("name", "content", "found"), [
    ("cases.jsonl", _3MD + b'"' + b"x" * (2 * 2**20) + b'"}\n', "longer than"),
    ("cases.jsonl", _3MD + b'"\xff\xfe.png"}\n', "not UTF-8"),
    ("cases.jsonl", _3MD + b"[" * 50_000 + b"]" * 50_000 + b"}\n", "nested too deeply"),
    ("cases.jsonl", _3MD + b"7" * 5000 + b"}\n", "not valid JSON"),  # past Python's int digit limit
    ("cases.jsonl", _3MD + b'{"bytes": 1000000000000}}\n', "embedded image"),  # bytes(n) would allocate n bytes
    ("cases.jsonl", _3MD + b'{"bytes": "Doe^Jane"}}\n', "embedded image"),
    ("cases.jsonl", _3MD + b'"' + b"n" * 5000 + b'.png"}\n', "not found"),  # longer than a file name may be
    ("cases.jsonl", _3MD + b'"a\\u0000.png"}\n', "not found"),  # a NUL byte in the name
    ("cases.csv", b"general_complaint,complaints,diagnosis,image\n\xff,Itchy,hives,a.png\n", "not UTF-8"),
    ("cases.csv", b"general_complaint,complaints,diagnosis,image\nA rash,Itchy,hives," + b"n" * 5000 + b"\n",
     "not found"),
    ("cases.csv", b"general_complaint,complaints,diagnosis,image\nA rash,Itchy,hives," + b"x" * (2 * 2**20) + b"\n",
     "longer than"),
], ids=["long-line", "not-utf8", "deep-json", "long-number", "huge-byte-count", "text-as-bytes", "long-name", "nul-name",
        "csv-not-utf8", "csv-long-name", "csv-long-line"])
def test_3mdbench_tables_are_bounded_and_refused_typed(tmp_path: Path, name: str, content: bytes,
                                                       found: str) -> None:
    from medagent.simulators.loaders import load_3mdbench

    (tmp_path / name).write_bytes(content)
    error = fast_and_small(lambda: load_3mdbench(tmp_path, image_cache=tmp_path / "cache"), CaseFileError)
    assert found in error.message and "Doe" not in error.message and str(tmp_path) not in error.message
    assert error.details.get("line") in (1, 2)  # the line (decoding reads ahead: a bad byte may name line 1)


def test_3mdbench_parquet_is_read_in_batches_with_typed_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medagent.simulators.loaders import load_3mdbench

    rows = [{"general_complaint": "A rash", "complaints": "Itchy.", "diagnosis": "hives", "image": "a.png"}] * 3
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("the whole table was read at once"))
    with pytest.raises(CaseFileError) as missing:  # the first row's image is not there: refused at row 1
        load_3mdbench(tmp_path / "t.parquet")
    assert missing.value.details.get("row") == 1 and "not found" in missing.value.message
    broken = tmp_path / "broken.parquet"
    broken.write_bytes((tmp_path / "t.parquet").read_bytes()[:-40] + b"\0" * 32 + b"PAR1")
    with pytest.raises(CaseFileError) as unreadable:
        load_3mdbench(broken)
    assert "Parquet" in unreadable.value.message


# -- numbers that size work --------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "line", "field"), [
    ("repeats: 1000000000", 5, "repeats"),
    ("repeats: 1e9", 5, "repeats"),
    ("seeds: [" + ", ".join(["1"] * 1001) + "]", 5, "seeds"),
    ("metrics: {bootstrap: 1000000000}", 5, "metrics.bootstrap"),
    ("metrics:\n  bootstrap: 1e9", 6, "metrics.bootstrap"),
    ("concurrency: {cases: 1000000}", 5, "concurrency.cases"),
    ("concurrency: {per_planner_endpoint: 100000}", 5, "concurrency.per_planner_endpoint"),
    ("concurrency: {per_expert: 100000}", 5, "concurrency.per_expert"),
    ("concurrency: {per_expert: {classify_chest_xray: 100000}}", 5, "concurrency.per_expert.classify_chest_xray"),
    ("dataset: {type: folder, path: ., max_cases: 100000000}", 5, "dataset.max_cases"),
], ids=lambda value: str(value)[:40])
def test_numbers_that_size_work_have_upper_bounds(setting: str, line: int, field: str) -> None:
    with pytest.raises(StudyConfigError) as caught:
        parse_study("name: big\n" + GRAPH + setting + "\n", "big.yaml")
    assert caught.value.line == line and caught.value.field is not None, caught.value.message
    assert caught.value.message.startswith(f"big.yaml:{line}: ") and field in caught.value.message


def test_the_upper_bounds_themselves_are_accepted() -> None:
    config = parse_study("name: big\n" + GRAPH + "repeats: 1000\nmetrics: {bootstrap: 100000}\n"
                         "concurrency: {cases: 256, per_planner_endpoint: 256, per_expert: 256}\n", "big.yaml")
    assert config.repeats == 1000 and config.metrics is not None and config.metrics.bootstrap == 100_000


def test_bootstrap_beyond_its_caps_is_a_typed_error_not_a_memory_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = np.array([f"c{i}" for i in range(100_000)])
    error = fast_and_small(lambda: CaseResampler(cases, BootstrapConfig(n_resamples=10**9)), ResourceExhausted)
    assert error.code == "resource_exhausted" and "metrics.bootstrap" in error.message
    with pytest.raises(ResourceExhausted):  # within the resample cap, but resamples x cases is too many cells
        CaseResampler(cases, BootstrapConfig(n_resamples=100_000))
    # a real MemoryError (numpy cannot allocate 10**6 x 10**5 int64 = 800 GB) becomes the same typed error
    from medagent.reports import bootstrap

    monkeypatch.setattr(bootstrap, "MAX_RESAMPLES", 10**7)
    monkeypatch.setattr(bootstrap, "MAX_RESAMPLE_CELLS", 10**13)
    with pytest.raises(ResourceExhausted, match="not enough memory"):
        CaseResampler(cases, BootstrapConfig(n_resamples=10**6))


# -- manifests: lazy rows, a row cap ---------------------------------------------------------------------


def big_manifest(folder: Path, rows: int) -> Path:
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "path", "Cardiomegaly"])
        writer.writerows([f"case-{index:07d}", str(NIH_NO_FINDING), index % 2] for index in range(rows))
    return manifest


def manifest_study(folder: Path, manifest: Path, extra: str = "") -> Path:
    study = folder / "study.yaml"
    study.write_text("name: big\n" + GRAPH + f"dataset:\n  type: manifest\n  path: {manifest.name}\n"
                     f"  columns: {{case_id: case_id, labels: [Cardiomegaly]}}\n{extra}")
    return study


def test_a_large_manifest_yields_its_first_case_without_reading_every_row(tmp_path: Path) -> None:
    manifest = big_manifest(tmp_path, 200_000)
    config = load_study(manifest_study(tmp_path, manifest, "  max_cases: 200000\n"))
    tracemalloc.start()
    try:
        cases = config.iter_cases()
        assert isinstance(cases, Iterator)
        first = next(cases)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first.case_id == "case-0000000" and first.labels == {"Cardiomegaly": 0}
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB: the rows were materialised"  # 200k cases: ~200 MB
    assert next(cases).case_id == "case-0000001"
    cases.close()  # closing early closes the file (filterwarnings=error would flag a leaked handle)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_rows_past_max_cases_are_refused_at_their_row(tmp_path: Path, kind: str) -> None:
    manifest = big_manifest(tmp_path, 1_001)
    if kind == "parquet":
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = pcsv.read_csv(manifest, convert_options=pcsv.ConvertOptions(column_types={"Cardiomegaly": "string"}))
        pq.write_table(table, tmp_path / "manifest.parquet", row_group_size=100)
        manifest = tmp_path / "manifest.parquet"
    config = load_study(manifest_study(tmp_path, manifest, "  max_cases: 1000\n"))
    seen = 0
    with pytest.raises(StudyConfigError) as caught:
        for _ in config.iter_cases():
            seen += 1
    assert seen == 1000 and caught.value.field == "dataset.max_cases"
    assert "row 1001" in caught.value.message and "more than 1000 rows" in caught.value.message
    assert str(NIH_NO_FINDING) not in caught.value.message
    # the setting changes behaviour: a higher cap accepts the same manifest
    assert len(load_study(manifest_study(tmp_path, manifest, "  max_cases: 1001\n")).cases()) == 1001


def test_folder_datasets_are_capped_too(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"image{index}.png").write_bytes(NIH_NO_FINDING.read_bytes()[:100])
    study = tmp_path / "study.yaml"
    study.write_text("name: f\n" + GRAPH + "dataset: {type: folder, path: ., max_cases: 2}\n")
    with pytest.raises(StudyConfigError) as caught:
        load_study(study).cases()
    assert caught.value.field == "dataset.max_cases" and caught.value.line == 5


@pytest.mark.parametrize("kind", ["manifest", "folder", "cases"])
@pytest.mark.parametrize("path", ['"a\\0b.csv"', "n" * 5000 + ".csv", "d/" * 3000 + "x.csv"],
                         ids=["nul", "long-name", "long-path"])
def test_an_unusable_dataset_path_is_a_located_study_error(tmp_path: Path, kind: str, path: str) -> None:
    graph = GRAPH if kind != "cases" else "graph:\n  type: dialogue\n"
    study = tmp_path / "study.yaml"
    study.write_text("name: f\n" + graph + f"dataset: {{type: {kind}, path: {path}}}\n")
    with pytest.raises(StudyConfigError) as caught:
        load_study(study).cases()
    assert caught.value.field == "dataset.path" and caught.value.line is not None
    assert "nnnnn" not in caught.value.message and "d/d/" not in caught.value.message


def test_max_cases_leaves_the_config_hash_unchanged(tmp_path: Path) -> None:
    from medagent.studies import config_hash

    manifest = big_manifest(tmp_path, 3)
    plain = config_hash(load_study(manifest_study(tmp_path, manifest)))
    assert plain == config_hash(load_study(manifest_study(tmp_path, manifest, "  max_cases: 7\n")))


@pytest.mark.parametrize(("content", "found"), [
    ("case_id,path,Cardiomegaly\nc1," + "x" * 200_000 + ",1\n", "cannot read the manifest after row 0"),
    ("case_id,path,Cardiomegaly\nc1,a\x00b,1\n", "file not found"),
    ("case_id,path,Cardiomegaly\nc1," + "d/" * 3000 + "x.png,1\n", "file not found"),
    ("case_id,path,Cardiomegaly\n\"c1,unterminated", ""),
], ids=["huge-field", "nul-in-path", "path-too-long", "unterminated-quote"])
def test_malformed_manifest_rows_are_located_typed_errors(tmp_path: Path, content: str, found: str) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(content)
    with pytest.raises(ConfigurationError) as caught:
        load_study(manifest_study(tmp_path, manifest)).cases()
    assert isinstance(caught.value, StudyConfigError) and found in caught.value.message
    assert "x" * 50 not in caught.value.message and "d/d/" not in caught.value.message


def test_json_case_file_is_read_by_the_bounded_reader(tmp_path: Path) -> None:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"cases": []}).replace("[]", "[" * 200 + "]" * 200))
    with pytest.raises(CaseFileError, match="nested deeper than 64"):
        load_cases(path)


def test_a_limited_run_reads_only_the_rows_it_runs(tmp_path: Path) -> None:
    """``medagent run --limit N`` takes the first N cases: a bad row further down is never read."""
    import itertools

    manifest = big_manifest(tmp_path, 3)
    manifest.write_text(manifest.read_text() + "case-bad,missing.png,1\n")
    config = load_study(manifest_study(tmp_path, manifest))
    assert [case.case_id for case in itertools.islice(config.iter_cases(), 3)] == [
        "case-0000000", "case-0000001", "case-0000002"]
    with pytest.raises(StudyConfigError, match="row 4"):
        config.cases()


def test_no_yaml_is_parsed_outside_the_bounded_reader() -> None:
    """A new YAML reader must go through medagent.yaml_io (no aliases, caps): PyYAML's own loaders are not called."""
    import re

    root = Path(__file__).resolve().parents[1] / "medagent"
    direct = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|compose|SafeLoader|Loader|FullLoader)\b")
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if path.name != "yaml_io.py" and direct.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


# -- text corpora for the index ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content"), [
    ("notes/a.txt", b"Doe^Jane \xff\xfe not UTF-8"),
    ("corpus.jsonl", b'{"id": "a", "text": "t"}\n{"id": "b", "text": "\xff"}\n'),
    ("corpus.jsonl", b'{"id": "a", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
    ("corpus.jsonl", b'{"id": "a", "text": ' + b"7" * 5000 + b"}\n"),
], ids=["txt-not-utf8", "jsonl-not-utf8", "jsonl-deep", "jsonl-long-number"])
def test_unreadable_text_corpora_are_typed_errors(tmp_path: Path, name: str, content: bytes) -> None:
    from medagent.retrieval.corpus import read_text_corpus

    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    with pytest.raises(ConfigurationError) as caught:
        read_text_corpus(tmp_path / "notes" if name.startswith("notes") else target)
    assert "Doe" not in caught.value.message and str(tmp_path) not in caught.value.message


@pytest.mark.parametrize("where", ["header", "row"])
def test_a_manifest_line_is_read_under_a_cap_not_whole(tmp_path: Path, where: str) -> None:
    """A 40 MB line without a line break (a header, or a row) is refused after the cap, not read into memory."""
    manifest = tmp_path / "manifest.csv"
    huge = b"x" * (40 * 2**20)
    manifest.write_bytes(huge + b"\n" if where == "header" else b"case_id,path,Cardiomegaly\nc1," + huge + b",1\n")
    study = manifest_study(tmp_path, manifest)
    error = fast_and_small(lambda: load_study(study).cases(), StudyConfigError)
    assert "cannot read the manifest" in error.message and "xxxx" not in error.message


def test_a_case_dataset_beyond_max_cases_is_refused_before_writing_its_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dataset.max_cases bounds the work of loading too: a 3MDBench export with embedded images stops at the cap
    instead of de-identifying and writing every image first."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from tests.conftest import TEST_SECRET

    monkeypatch.setenv("MEDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDAGENT_DEID_SECRET", TEST_SECRET.decode())
    rows = []
    for shade in range(6):
        out = io.BytesIO()
        Image.new("L", (8, 8), color=shade * 40).save(out, format="PNG")
        rows.append({"general_complaint": "A rash", "complaints": "Itchy.", "diagnosis": "hives",
                     "image": {"bytes": out.getvalue(), "path": None}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cases.parquet")
    study = tmp_path / "study.yaml"
    study.write_text("name: c\ngraph:\n  type: dialogue\n"
                     "dataset: {type: cases, path: cases.parquet, max_cases: 2}\n")
    with pytest.raises(StudyConfigError) as caught:
        load_study(study).cases()
    assert caught.value.field == "dataset.max_cases"
    assert len(list((tmp_path / "home" / "case-images").iterdir())) <= 2
