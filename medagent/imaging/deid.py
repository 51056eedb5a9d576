"""DICOM de-identification, applied before any metadata can leave the loader.

Implements a documented subset of the PS3.15 Annex E Basic Application Level
Confidentiality Profile with two options:

* Retain Patient Characteristics: sex, age (capped at 90Y), size and weight stay.
* Retain Longitudinal Temporal Information with Modified Dates: DA/DT values are
  shifted by a per-patient number of days, so intervals between a patient's studies
  survive while real dates do not.

Actions: identifying attributes (names, IDs, addresses, institution and physician
data, accession and study IDs, free-text comments) are removed or emptied; every
remaining person-name (PN) element is emptied; private tags are removed; every UID
outside the DICOM-defined root ``1.2.840.10008`` is remapped to a ``2.25.`` UID
derived from a keyed hash, so the same input UID always maps to the same output UID
under one secret. The report lists tag keywords and actions, never values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pydicom.dataset import Dataset

from medagent.imaging.record import DeidAction, DeidReport

PROFILE_OPTIONS = [
    "Retain Patient Characteristics Option",
    "Retain Longitudinal Temporal Information with Modified Dates Option",
]

# Attributes removed outright (action X in PS3.15 Table E.1-1).
REMOVE_KEYWORDS: frozenset[str] = frozenset(
    {
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
        "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
        "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "OperatorIdentificationSequence",
        "RequestingPhysician", "RequestingService", "StationName", "DeviceSerialNumber", "PlateID", "CassetteID",
        "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientBirthTime",
        "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "MilitaryRank", "BranchOfService",
        "MedicalRecordLocator", "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments",
        "PatientInsurancePlanCodeSequence", "PatientReligiousPreference", "CountryOfResidence", "RegionOfResidence",
        "IssuerOfPatientID", "ResponsiblePerson", "ResponsibleOrganization", "ImageComments", "StudyComments",
        "InterpretationText", "RequestAttributesSequence", "ReferencedPatientSequence", "AdmittingDiagnosesDescription",
        "AdmissionID", "ReasonForStudy", "ReasonForTheRequestedProcedure", "RequestedProcedureID",
        "PerformedProcedureStepID", "ScheduledProcedureStepID", "PerformedLocation", "ScheduledStudyLocation",
        "CurrentPatientLocation", "PatientInstitutionResidence", "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest", "TextComments", "AcquisitionComments", "DerivationDescription",
        "ProtocolName", "StudyDescription", "SeriesDescription", "PerformedProcedureStepDescription",
        "RequestedProcedureDescription", "ScheduledProcedureStepDescription", "IdentifyingComments",
        "PatientSpeciesDescription", "ContentCreatorName", "VerifyingObserverName", "PersonName", "PersonAddress",
    }
)

# Attributes kept but emptied (action Z): the attribute must exist in the IOD, its value must not.
EMPTY_KEYWORDS: frozenset[str] = frozenset(
    {"PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "StudyID"}
)

PATIENT_NAME_REPLACEMENT = "ANONYMOUS"
_WELL_KNOWN_UID_ROOT = "1.2.840.10008."
_MAX_AGE_YEARS = 90


def load_or_create_secret(data_dir: Path) -> bytes:
    """The installation's de-identification key: from ``MEDAGENT_DEID_SECRET`` or a file in ``data_dir``."""
    from_env = os.environ.get("MEDAGENT_DEID_SECRET")
    if from_env:
        return from_env.encode()
    secret_file = data_dir / "deid.secret"
    if secret_file.is_file():
        return secret_file.read_bytes()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    temporary = secret_file.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(secret)
    os.chmod(temporary, 0o600)
    os.replace(temporary, secret_file)
    return secret_file.read_bytes()


class Deidentifier:
    """Stateless apart from its key: safe to share between threads."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 bytes")
        self._secret = secret

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).digest()

    def remap_uid(self, uid: str) -> str:
        return "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        return "ANON-" + self._digest("patient", patient_id).hex()[:12].upper()

    def date_offset_days(self, patient_id: str) -> int:
        """Between 365 and 4014 days back; the same for every study of one patient."""
        return 365 + int.from_bytes(self._digest("date", patient_id)[:4], "big") % 3650

    def deidentify(self, dataset: Dataset) -> DeidReport:
        """Modify ``dataset`` in place and return what was done."""
        report = DeidReport(options=list(PROFILE_OPTIONS))
        patient_id = str(dataset.get("PatientID", "") or "")
        offset = dt.timedelta(days=self.date_offset_days(patient_id))
        burned_in = str(dataset.get("BurnedInAnnotation", "") or "").upper()
        report.burned_in_annotation = {"YES": True, "NO": False}.get(burned_in)
        if report.burned_in_annotation:
            report.warnings.append("BurnedInAnnotation is YES: pixel data may show identifying text")

        before = sum(1 for _ in dataset.iterall() if _.tag.is_private)
        dataset.remove_private_tags()
        report.private_tags_removed = before

        done: set[tuple[str, str]] = set()
        self._visit(dataset, offset, done)
        if getattr(dataset, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in dataset.file_meta:
            dataset.file_meta.MediaStorageSOPInstanceUID = self.remap_uid(dataset.file_meta.MediaStorageSOPInstanceUID)
            done.add(("MediaStorageSOPInstanceUID", "remapped"))
        if "PatientName" in dataset:
            dataset.PatientName = PATIENT_NAME_REPLACEMENT
            done.add(("PatientName", "replaced"))
        dataset.PatientID = self.pseudonym(patient_id)
        done.add(("PatientID", "replaced"))
        self._cap_age(dataset, done)
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = "medagent PS3.15 basic profile subset"
        report.actions = [DeidAction(keyword=k, action=a) for k, a in sorted(done)]
        return report

    def _visit(self, dataset: Dataset, offset: dt.timedelta, done: set[tuple[str, str]]) -> None:
        for element in list(dataset):
            keyword = element.keyword or str(element.tag)
            if keyword in REMOVE_KEYWORDS:
                del dataset[element.tag]
                done.add((keyword, "removed"))
            elif keyword in EMPTY_KEYWORDS:
                element.value = [] if element.VR == "SQ" else ""
                done.add((keyword, "emptied"))
            elif element.VR == "SQ":
                for item in element.value:
                    self._visit(item, offset, done)
            elif element.VR == "PN" and keyword != "PatientName":
                element.value = ""
                done.add((keyword, "emptied"))
            elif element.VR == "UI" and element.value:
                remapped = self._remap_value(element.value)
                if remapped != element.value:
                    element.value = remapped
                    done.add((keyword, "remapped"))
            elif element.VR in ("DA", "DT") and element.value:
                element.value = _shift_dates(element.value, element.VR, offset)
                done.add((keyword, "shifted"))

    def _remap_value(self, value: object) -> object:
        if isinstance(value, str):
            return value if value.startswith(_WELL_KNOWN_UID_ROOT) else self.remap_uid(value)
        return [self._remap_value(item) for item in value]  # type: ignore[attr-defined]

    @staticmethod
    def _cap_age(dataset: Dataset, done: set[tuple[str, str]]) -> None:
        age = str(dataset.get("PatientAge", "") or "")
        if age.endswith("Y") and age[:-1].isdigit() and int(age[:-1]) > _MAX_AGE_YEARS:
            dataset.PatientAge = f"{_MAX_AGE_YEARS:03d}Y"
            done.add(("PatientAge", "replaced"))


def _shift_one(value: str, vr: str, offset: dt.timedelta) -> str:
    text = value.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""  # unparseable dates are dropped, not passed through
    try:
        shifted = dt.datetime.strptime(text[:8], "%Y%m%d") - offset
    except ValueError:
        return ""
    return shifted.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")


def _shift_dates(value: object, vr: str, offset: dt.timedelta) -> object:
    if isinstance(value, str):
        return _shift_one(value, vr, offset)
    return [_shift_one(str(item), vr, offset) for item in value]  # type: ignore[attr-defined]
