"""What is fuzzed, from which real seeds: medagent's image loader, YAML/case/manifest loaders, planner-reply parsers.

Run as a worker (``python -m tests.fuzz.targets BUDGET_S SEED FOUND_DIR REPORT``): the test starts it in a
subprocess with an address-space limit, so a memory blow-up is a finding rather than a dead test run.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.resources
import io
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fuzz.engine import Stats, Target, fuzz, mutate_bytes

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MEDAGENT_SHARED_DATA", REPO.parent / "shared" / "data"))  # as tests/conftest.py
WORK = Path(tempfile.mkdtemp(prefix="medagent-fuzz-"))


def _file_runner(suffix: str, call: Callable[[Path], object]) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        path = WORK / f"input{suffix}"
        path.write_bytes(data)
        return call(path)
    return run


def _raster_seeds() -> list[bytes]:
    seeds = [path.read_bytes() for path in sorted((SHARED_DATA / "torchxrayvision-nih").glob("*.png"))[:2]]
    crop = np.asarray(Image.open(sorted((SHARED_DATA / "torchxrayvision-nih").glob("*.png"))[0]).convert("L"))[:96, :96]
    for image, kind in ((Image.fromarray(crop), "PNG"), (Image.fromarray(crop.astype(np.uint16) * 200), "PNG"),
                        (Image.fromarray(np.stack([crop] * 3, -1)), "PNG"), (Image.fromarray(crop).quantize(16), "PNG"),
                        (Image.fromarray(crop), "JPEG")):
        buffer = io.BytesIO()
        image.save(buffer, kind)
        seeds.append(buffer.getvalue())
    return seeds


def _dicom_seeds() -> list[bytes]:
    import pydicom.examples

    return [Path(pydicom.examples.get_path(name)).read_bytes() for name in ("ct", "mr", "rgb_color", "overlay")]


def _nifti_seeds() -> list[bytes]:
    data = Path(str(importlib.resources.files("nibabel") / "tests" / "data"))
    names = ("example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz", "anatomical.nii")
    return [(data / name).read_bytes() for name in names if (data / name).is_file()]


def _mutate_nifti(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """Half the time: mutate the decompressed header and voxels, then compress again."""
    if data[:2] == b"\x1f\x8b" and rng.random() < 0.5:
        try:
            return gzip.compress(mutate_bytes(gzip.decompress(data), rng, seeds), mtime=0)
        except (OSError, EOFError):
            pass
    return mutate_bytes(data, rng, seeds)


def _image_targets() -> list[Target]:
    from medagent.imaging import Deidentifier, ImageLoader

    loader = ImageLoader(Deidentifier(b"medagent-fuzz-secret-0123456789abcdef"))
    nifti = _nifti_seeds()

    def load_nifti(data: bytes) -> object:
        suffix = ".nii.gz" if data[:2] == b"\x1f\x8b" else ".nii"
        return _file_runner(suffix, loader.load)(data)

    return [Target("image_raster", _raster_seeds(), _file_runner(".png", loader.load)),
            Target("image_dicom", _dicom_seeds(), _file_runner(".dcm", loader.load)),
            Target("image_nifti", nifti, load_nifti, mutate=_mutate_nifti),
            _series_target(loader)]


def _series_target(loader: object) -> Target:
    """Three CT slices 2.5 mm apart; the middle one is mutated, the folder loaded as one series."""
    import pydicom
    import pydicom.examples
    from pydicom.uid import generate_uid

    folder = WORK / "series"
    folder.mkdir()
    uid = generate_uid()
    slices = []
    for k in range(3):
        dataset = pydicom.dcmread(pydicom.examples.get_path("ct"))
        dataset.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.SeriesInstanceUID, dataset.InstanceNumber = uid, k + 1
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        slices.append(buffer.getvalue())
    (folder / "a.dcm").write_bytes(slices[0])
    (folder / "c.dcm").write_bytes(slices[2])

    def run(data: bytes) -> object:
        (folder / "b.dcm").write_bytes(data)
        return loader.load(folder)  # type: ignore[attr-defined]

    return Target("image_series", [slices[1]], run)


def _manifest_seed() -> bytes:
    images = sorted((SHARED_DATA / "torchxrayvision-nih").glob("*.png"))[:2]
    rows = ["case_id,path,Cardiomegaly,sex"] + [f"c{index},{image},{index % 2},F" for index, image in enumerate(images)]
    return ("\n".join(rows) + "\n").encode()


def _threemdbench_seed() -> bytes:
    image = sorted((SHARED_DATA / "torchxrayvision-nih").glob("*.png"))[0]
    rows = [{"id": f"c{index}", "general_complaint": "A cough", "complaints": "Two weeks, worse at night.",
             "diagnosis": "bronchitis", "personality": "sanguine", "image": str(image)} for index in range(2)]
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


def _data_targets() -> list[Target]:
    from medagent.simulators.builtin import label_set_named
    from medagent.simulators.loaders import load_cases
    from medagent.studies import parse_study
    from medagent.studies.datasets import ColumnMapping, DatasetSpec, load_dataset

    data = importlib.resources.files("medagent.simulators") / "data"
    studies = [path.read_bytes() for path in sorted((REPO / "workflows").glob("*.yaml"))]
    manifest = DatasetSpec(type="manifest", path="input.csv", columns=ColumnMapping(
        case_id="case_id", labels=["Cardiomegaly"], subgroups=["sex"]))
    clinic = json.dumps({"OSCE_Examination": {
        "Objective_for_Doctor": "Assess the patient.", "Patient_Actor": {
            "Demographics": "54-year-old man", "History": "Two days of cough.",
            "Symptoms": {"Primary_Symptom": "cough", "Secondary_Symptoms": ["fever"]}},
        "Physical_Examination_Findings": {"Vitals": {"Temperature": "38.5 C"}},
        "Test_Results": {"Chest_Xray": "right lower lobe opacity"}, "Correct_Diagnosis": "Pneumonia"}})
    return [
        Target("study_yaml", studies, lambda raw: parse_study(raw.decode("utf-8", "surrogateescape"), "fuzz.yaml"),
               text=True),
        Target("case_file", [(data / "builtin_cases.yaml").read_bytes()], _file_runner(".yaml", load_cases),
               text=True),
        Target("label_set", [(data / "builtin_labels.yaml").read_bytes()],
               _file_runner(".yaml", lambda path: label_set_named(str(path))),
               text=True),
        Target("agentclinic", [(clinic + "\n" + clinic + "\n").encode()],
               _file_runner(".jsonl", lambda path: load_cases(path, "agentclinic")), text=True),
        Target("manifest", [_manifest_seed()], _file_runner(".csv", lambda path: load_dataset(manifest, WORK)),
               text=True),
        Target("threemdbench", [_threemdbench_seed()],
               _file_runner(".jsonl", lambda path: load_cases(path, "3mdbench", image_cache=WORK / "case-images")),
               text=True),
    ]


def _reply_targets() -> list[Target]:
    from medagent.agents.doctor import DoctorAgent
    from medagent.agents.scripted import ScriptedPlanner
    from medagent.dialogue.protocol import DialogueOutcome
    from medagent.simulators.assessor import RubricScores, assess
    from medagent.simulators.builtin import builtin_cases, builtin_label_set
    from medagent.workflows.agent_loop import AgentLoop

    def planner(data: bytes) -> ScriptedPlanner:
        return ScriptedPlanner(lambda request: data.decode("utf-8", "replace"))

    def doctor(data: bytes) -> object:
        agent = DoctorAgent(planner(data), label_set=builtin_label_set(), max_reasks=0)
        return asyncio.run(agent.respond([], final=False))

    case = builtin_cases()[0]
    outcome = DialogueOutcome(case_id=case.case_id, turns=[], stop_reason="diagnosis", diagnosis_text="none",
                              diagnosis="none", leaks_redacted=0, models={}, strategy="dialogue")

    def assessor(data: bytes) -> object:
        return asyncio.run(assess(planner(data), case, outcome, max_reasks=0))

    tools = [{"type": "function", "function": {"name": "classify_chest_xray", "description": "d", "parameters": {
        "type": "object", "properties": {"image_id": {"type": "string"}}, "required": ["image_id"]}}}]

    def structured(data: bytes) -> object:
        loop = AgentLoop.__new__(AgentLoop)  # only the planner is used by the structured-step parser
        loop.planner = planner(data)
        return asyncio.run(loop._structured_turn([{"role": "user", "content": "q"}], tools, 0))

    doctor_seeds = [b'{"action": "ask", "text": "Where does it hurt?"}',
                    b'{"action": "diagnose", "text": "none", "explanation": "unclear"}']
    rubric = {name: 1 for name in RubricScores.model_fields}
    assessor_seeds = [json.dumps({**rubric, "overall": "satisfactory"}).encode()]
    structured_seeds = [b'{"call": {"name": "classify_chest_xray", "arguments": {"image_id": "img-1"}}}']
    return [Target("reply_doctor", doctor_seeds, doctor, text=True),
            Target("reply_assessor", assessor_seeds, assessor, text=True),
            Target("reply_structured_step", structured_seeds, structured, text=True)]


def _answer_and_request_targets() -> list[Target]:
    """A VQA reply's answer extraction (never raises: a reply it cannot read is recorded as unparsed) and the
    OpenAI facade's request body (hostile JSON from any client: a result, or a validation or typed error)."""
    from pydantic import ValidationError

    from medagent.questions.answers import extract_answer
    from medagent.questions.model import Question
    from medagent.service.openai_inputs import decode_image, image_urls, question
    from medagent.service.openai_schemas import ChatRequest

    choice = Question(question_id="q1", question="What is the main finding?", answer="B", options={
        "A": "Cardiomegaly", "B": "Pleural effusion", "C": "Pneumothorax", "D": "Normal chest radiograph"})
    yes_no = Question(question_id="q2", question="Is there a pleural effusion?", answer="yes")

    def answer(data: bytes) -> object:
        text = data.decode("utf-8", "replace")
        return extract_answer(text, choice), extract_answer(text, yes_no)

    def request(data: bytes) -> object:
        try:
            body = ChatRequest.model_validate_json(data)
        except ValidationError:  # the service answers it with a 400 before any of medagent's code runs
            return None
        asked = question(body.messages, 8000)
        return asked, [decode_image(url, 1 << 20) for url in image_urls(body.messages, 32)]

    answer_seeds = [b"B", b"The answer is (B) Pleural effusion.", b"<answer>C</answer>", b"\\boxed{yes}",
                    b"**Answer:** No, there is no effusion.", "答案：B".encode()]
    request_seeds = [json.dumps({"model": "medagent", "messages": [
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": [{"type": "text", "text": "Is there cardiomegaly?"}, {
            "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}).encode()]
    return [Target("reply_vqa_answer", answer_seeds, answer, text=True),
            Target("openai_request", request_seeds, request, text=True)]


def all_targets() -> list[Target]:
    return [*_image_targets(), *_data_targets(), *_reply_targets(), *_answer_and_request_targets()]


def main(budget_s: float, seed: int, found_dir: Path, report: Path) -> None:
    import warnings

    warnings.simplefilter("ignore")  # decoders warn on odd inputs; only exceptions break the invariant
    targets = all_targets()
    stats = Stats()
    rng = random.Random(seed)
    for target in targets:
        fuzz(target, budget_s / len(targets), rng, stats, found_dir)
    report.write_text(json.dumps({"seed": seed, "budget_s": budget_s, **asdict(stats)}, indent=1))


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
