"""De-identification end to end: PHI planted in a real CT file never reaches records, reports or the store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest
from tests.conftest import TEST_SECRET
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medagent.imaging import Deidentifier, ImageLoader
from medagent.imaging.record import Modality
from medagent.tools.artifacts import ArtifactStore

OTHER_SECRET = b"another-secret-fedcba9876543210"
NESTED_UID = "1.2.826.0.1.3680043.9.7777.42"  # a non-DICOM-root UID inside a sequence item
PHI = [
    "Doe", "Jane", "MRN-123456", "19500101", "ACC999", "St Example Hospital", "Example", "House", "Gregory",
    "Smith", "Olivia", "secret-private", "ACME", "Quinn", "Carl", NESTED_UID, "20240115", "095Y",
    "20040119",  # the example file's own acquisition dates, shifted too
]


def phi_dataset(ct_path: Path, *, patient_id: str = "MRN-123456", study_date: str = "20240115") -> Dataset:
    """The pydicom CT example with identifying values planted at the top level, in a sequence and in private tags."""
    ds = pydicom.dcmread(ct_path)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.AccessionNumber = "ACC999"
    ds.InstitutionName = "St Example Hospital"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.OperatorsName = "Smith^Olivia"
    ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "secret-private")
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = NESTED_UID
    ds.ReferencedImageSequence = Sequence([item])  # X/Z/U* in Annex E: kept, its UIDs remapped
    coded = Dataset()
    coded.ConsultingPhysicianName = "Quinn^Carl"
    ds.AnatomicRegionSequence = Sequence([coded])  # not in the table: walked, the name inside emptied
    ds.StudyDate = study_date
    ds.PatientAge = "095Y"
    ds.BurnedInAnnotation = "YES"
    return ds


def write_phi_file(ct_path: Path, target: Path, **values: str) -> Path:
    phi_dataset(ct_path, **values).save_as(target)
    return target


@pytest.fixture
def phi_file(pydicom_ct: Path, tmp_path: Path) -> Path:
    return write_phi_file(pydicom_ct, tmp_path / "study.dcm")


@pytest.fixture(scope="module")
def original_uids(pydicom_ct: Path) -> list[str]:
    """Every institution-issued UID in the example file (anything outside 1.2.840.10008)."""
    ds = pydicom.dcmread(pydicom_ct)
    found = [str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value]
    found += [str(e.value) for e in ds.file_meta if e.VR == "UI" and e.keyword != "ImplementationClassUID"]
    return [uid for uid in found if not uid.startswith("1.2.840.10008.")]


def assert_clean(text: str, original_uids: list[str]) -> None:
    for value in [*PHI, *original_uids]:
        assert value not in text, f"identifying value {value!r} leaked"


def test_no_phi_in_record_report_or_store(
    loader: ImageLoader, phi_file: Path, tmp_path: Path, original_uids: list[str]
) -> None:
    record = loader.load(phi_file)
    assert record.deid is not None
    assert_clean(record.model_dump_json(), original_uids)
    assert_clean(record.deid.model_dump_json(), original_uids)
    assert_clean(repr(record.summary()), original_uids)

    store = ArtifactStore(tmp_path / "store")
    artifact = store.put_image(record)
    index_files = list((tmp_path / "store" / "index").glob("*.json"))
    assert [p.stem for p in index_files] == [artifact.id]
    assert_clean(index_files[0].read_text(), original_uids)
    object_bytes = store.read_bytes(artifact.id)
    for value in [*PHI, *original_uids]:
        assert value.encode() not in object_bytes
    assert store.load_image(artifact.id).deid == record.deid  # the report survives the round trip


def test_report_lists_keywords_and_actions_only(loader: ImageLoader, phi_file: Path) -> None:
    report = loader.load(phi_file).deid
    assert report is not None
    actions = {(a.keyword, a.action) for a in report.actions}
    assert {
        ("PatientName", "replaced"),
        ("PatientID", "replaced"),
        ("PatientBirthDate", "emptied"),
        ("AccessionNumber", "emptied"),
        ("ReferringPhysicianName", "emptied"),
        ("ConsultingPhysicianName", "emptied"),
        ("InstitutionName", "removed"),
        ("OperatorsName", "removed"),
        ("StudyDate", "shifted"),
        ("StudyInstanceUID", "remapped"),
        ("ReferencedSOPInstanceUID", "remapped"),
        ("PatientAge", "replaced"),
    } <= actions
    assert {a.action for a in report.actions} <= {"removed", "emptied", "replaced", "shifted", "remapped",
                                                  "sanitised"}
    for action in report.actions:  # keywords only: known DICOM keywords (or the file's preamble), no values
        assert action.keyword == "(preamble)" or tag_for_keyword(action.keyword) is not None, action.keyword
    assert report.private_tags_removed >= 1
    assert len(report.options) == 2


def test_age_over_90_capped(loader: ImageLoader, phi_file: Path) -> None:
    assert loader.load(phi_file).metadata.patient_age == "090Y"


def test_burned_in_annotation_warns(loader: ImageLoader, phi_file: Path) -> None:
    report = loader.load(phi_file).deid
    assert report is not None and report.burned_in_annotation is True
    assert any("BurnedInAnnotation" in warning for warning in report.warnings)


def test_safe_metadata_is_ct_and_anonymous(loader: ImageLoader, phi_file: Path, original_uids: list[str]) -> None:
    record = loader.load(phi_file)
    metadata = record.metadata
    assert record.modality is Modality.CT and metadata.modality is Modality.CT
    assert (metadata.rows, metadata.columns) == (128, 128)
    for uid in (metadata.study_uid, metadata.series_uid, metadata.instance_uid):
        assert uid is not None and uid.startswith("2.25.")
    assert metadata.study_date_shifted not in (None, "20240115")
    assert_clean(metadata.model_dump_json(), original_uids)


# -- UIDs ----------------------------------------------------------------------------


def test_study_uid_remapping_is_keyed_and_stable(loader: ImageLoader, phi_file: Path, pydicom_ct: Path) -> None:
    original = pydicom.dcmread(pydicom_ct).StudyInstanceUID
    first, second = loader.load(phi_file).metadata.study_uid, loader.load(phi_file).metadata.study_uid
    other = ImageLoader(Deidentifier(OTHER_SECRET)).load(phi_file).metadata.study_uid
    assert first is not None and first.startswith("2.25.") and first != original
    assert first == second  # same file, same secret
    assert other is not None and other.startswith("2.25.") and other != first
    assert first == Deidentifier(TEST_SECRET).remap_uid(original)


def test_dicom_defined_uids_untouched(pydicom_ct: Path) -> None:
    ds = phi_dataset(pydicom_ct)
    sop_class, syntax = ds.SOPClassUID, ds.file_meta.TransferSyntaxUID
    storage_class = ds.file_meta.MediaStorageSOPClassUID
    study_uid = ds.StudyInstanceUID
    assert sop_class.startswith("1.2.840.10008.") and syntax.startswith("1.2.840.10008.")

    Deidentifier(TEST_SECRET).deidentify(ds)
    assert ds.SOPClassUID == sop_class
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.file_meta.MediaStorageSOPClassUID == storage_class
    assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == sop_class
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID.startswith("2.25.")
    assert ds.StudyInstanceUID.startswith("2.25.") and ds.StudyInstanceUID != study_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID  # remapped consistently
    assert not any(e.tag.is_private for e in ds.iterall())
    assert ds.AnatomicRegionSequence[0].ConsultingPhysicianName == ""
    assert ds.PatientIdentityRemoved == "YES"


# -- dates ---------------------------------------------------------------------------


def shifted_study_date(loader: ImageLoader, ct_path: Path, target: Path, **values: str) -> dt.date:
    shifted = loader.load(write_phi_file(ct_path, target, **values)).metadata.study_date_shifted
    assert shifted is not None
    return dt.datetime.strptime(shifted, "%Y%m%d").date()


def test_date_shift_keeps_a_patients_intervals(loader: ImageLoader, pydicom_ct: Path, tmp_path: Path) -> None:
    january = shifted_study_date(loader, pydicom_ct, tmp_path / "a.dcm", study_date="20240115")
    march = shifted_study_date(loader, pydicom_ct, tmp_path / "b.dcm", study_date="20240301")
    assert (march - january).days == 46  # 2024 is a leap year
    assert january != dt.date(2024, 1, 15) and march != dt.date(2024, 3, 1)
    assert dt.date(2024, 1, 15) - january >= dt.timedelta(days=365)


def test_other_patient_gets_other_offset(loader: ImageLoader, pydicom_ct: Path, tmp_path: Path) -> None:
    deidentifier = Deidentifier(TEST_SECRET)
    assert deidentifier.date_offset_days("MRN-123456") != deidentifier.date_offset_days("MRN-654321")
    ours = shifted_study_date(loader, pydicom_ct, tmp_path / "a.dcm")
    theirs = shifted_study_date(loader, pydicom_ct, tmp_path / "b.dcm", patient_id="MRN-654321")
    assert ours != theirs
    assert dt.date(2024, 1, 15) - ours == dt.timedelta(days=deidentifier.date_offset_days("MRN-123456"))
