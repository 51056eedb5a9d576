"""DICOM de-identification, applied before any metadata can leave the loader.

Driven by the complete attribute table of the PS3.15 Annex E Basic Application Level
Confidentiality Profile (:mod:`medagent.imaging.deid_profile`), walking every sequence, with two
options:

* Retain Patient Characteristics: sex, age (capped at 90Y), size, weight and sex-neutered stay.
* Retain Longitudinal Temporal Information with Modified Dates: every DA/DT value is shifted by a
  per-patient number of days (intervals between a patient's studies survive, real dates do not);
  times stay. Unreadable dates are emptied, never passed through.

Every other listed attribute is removed (X actions) or emptied (Z, D); listed sequences are removed
or emptied, except X/Z/U* ones (referenced images), which are walked. Outside the table: person names
and URIs (but coding-scheme references) are emptied, private tags and elements of unknown VR removed, and
kept text (manufacturer, model, body part...) loses control characters and line breaks and is length-capped.
A file's 128-byte preamble is zeroed, and its file meta loses the sending and receiving systems' AE titles
and addresses. Every UID outside the DICOM-defined root ``1.2.840.10008`` becomes a ``2.25.`` UID from a keyed hash, so one input UID maps
to one output UID under one secret. An element whose value cannot be read is removed. The report lists
tag keywords and actions, never values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from medagent.imaging.deid_profile import STANDARD_EDITION, profile_action
from medagent.imaging.deid_secret import check_secret, load_or_create_secret
from medagent.imaging.record import DeidAction, DeidReport

PROFILE_OPTIONS = [
    "Retain Patient Characteristics Option",
    "Retain Longitudinal Temporal Information with Modified Dates Option",
]
PROFILE_NAME: Final = ("DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile "
                       f"(Table E.1-1, {STANDARD_EDITION})")
PATIENT_NAME_REPLACEMENT = "ANONYMOUS"
MAX_SEQUENCE_DEPTH: Final = 16  # deeper nesting is removed rather than walked (no recursion bombs)
_MAX_AGE_YEARS = 90
_DICOM_DEFINED_UID = re.compile(r"1\.2\.840\.10008(\.(0|[1-9][0-9]*))+")
_DT_SUFFIX = re.compile(r"[0-9]{0,6}(\.[0-9]{1,6})?([+-][0-9]{4})?")
_TEXT_CAPS: Final = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 256, "LT": 256, "UT": 256, "UC": 256,
                     "UR": 256}
_NUMBER_SYNTAX: Final = {"DS": re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"),
                         "IS": re.compile(r"[+-]?[0-9]+"), "AS": re.compile(r"[0-9]{3}[DWMY]")}
_REFERENCE_VRS: Final = frozenset({"UI", "SQ", "AT", "IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"})
_STRING_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                                "UC", "UI", "UR", "UT"})


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(int(tag) for keyword in keywords if (tag := tag_for_keyword(keyword)) is not None)


RETAINED: Final = _tags("PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientSexNeutered")
_SET_AFTER_WALK: Final = _tags("PatientName", "PatientID")  # at the top level only
_EMPTIED: Final = _tags("PatientBirthDate")
_REMOVED: Final = _tags("PatientBirthTime")
# file meta attributes that name the sending or receiving systems
_FILE_META_REMOVED: Final = _tags("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                                  "ReceivingApplicationEntityTitle", "SourcePresentationAddress",
                                  "SendingPresentationAddress", "ReceivingPresentationAddress",
                                  "PrivateInformationCreatorUID", "PrivateInformation")
# URIs outside the table name hosts, folders (a patient's name in a path) and original UIDs: emptied, except
# these references to coding schemes
_CODE_URIS: Final = _tags("CodingSchemeURL", "URNCodeValue")

__all__ = ["PATIENT_NAME_REPLACEMENT", "PROFILE_NAME", "PROFILE_OPTIONS", "RETAINED", "Deidentifier",
           "load_or_create_secret"]


@dataclass
class _Walk:
    offset: dt.timedelta
    done: set[tuple[str, str]] = field(default_factory=set)
    warnings: set[str] = field(default_factory=set)
    private_removed: int = 0


def _keyword(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def sanitise_text(value: str, cap: int) -> str:
    """Control, format and line-separator characters become spaces; runs of white space collapse; capped."""
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in value)
    return " ".join(cleaned.split())[:cap]


class Deidentifier:
    """Stateless apart from its key: safe to share between threads."""

    def __init__(self, secret: bytes) -> None:
        self._secret = check_secret(secret, "the de-identification secret")

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).digest()

    def remap_uid(self, uid: str) -> str:
        return "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        return "ANON-" + self._digest("patient", patient_id).hex()[:12].upper()

    def content_id(self, data: bytes) -> str:
        """A keyed digest of raw bytes: names a cached copy without a hash that confirms the original file."""
        return hmac.new(self._secret, b"content:" + data, hashlib.sha256).hexdigest()

    def date_offset_days(self, patient_id: str) -> int:
        """Between 365 and 4014 days back; the same for every study of one patient."""
        return 365 + int.from_bytes(self._digest("date", patient_id)[:4], "big") % 3650

    def deidentify(self, dataset: Dataset) -> DeidReport:
        """Modify ``dataset`` in place and return what was done. Never raises on unreadable values."""
        report = DeidReport(profile=PROFILE_NAME, options=list(PROFILE_OPTIONS))
        patient_id = _read_text(dataset, "PatientID")
        walk = _Walk(offset=dt.timedelta(days=self.date_offset_days(patient_id)))
        report.burned_in_annotation = {"YES": True, "NO": False}.get(_read_text(dataset, "BurnedInAnnotation").upper())
        if report.burned_in_annotation:
            report.warnings.append("BurnedInAnnotation is YES: pixel data may show identifying text")

        self._visit(dataset, walk, depth=0)
        self._file_meta(dataset, walk)
        if any(getattr(dataset, "preamble", None) or b""):  # free for applications: a name or an MRN may sit there
            dataset.preamble = b"\0" * 128
            walk.done.add(("(preamble)", "emptied"))
        if "PatientName" in dataset:
            dataset.PatientName = PATIENT_NAME_REPLACEMENT
            walk.done.add(("PatientName", "replaced"))
        dataset.PatientID = self.pseudonym(patient_id)
        walk.done.add(("PatientID", "replaced"))
        _cap_age(dataset, walk.done)
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = f"medagent PS3.15 E.1-1 {STANDARD_EDITION} basic profile"
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
        report.private_tags_removed = walk.private_removed
        report.actions = [DeidAction(keyword=k, action=a) for k, a in sorted(walk.done)]
        report.warnings.extend(sorted(walk.warnings))
        return report

    def _file_meta(self, dataset: Dataset, walk: _Walk) -> None:
        meta = getattr(dataset, "file_meta", None)
        if meta is None:
            return
        for tag in _FILE_META_REMOVED & {int(t) for t in meta.keys()}:  # noqa: SIM118 - tags, not elements
            del meta[tag]
            walk.done.add((_keyword(Tag(tag)), "removed"))
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self._remap_value(meta.MediaStorageSOPInstanceUID)
            walk.done.add(("MediaStorageSOPInstanceUID", "remapped"))

    def _visit(self, dataset: Dataset, walk: _Walk, depth: int, references_only: bool = False) -> None:
        # keys(), not iteration: iterating converts every raw element, which raises on unreadable values
        for tag in [Tag(t) for t in dataset.keys()]:  # noqa: SIM118
            if tag.is_private:
                del dataset[tag]
                walk.private_removed += 1
                continue
            keyword = _keyword(tag)
            try:
                element = dataset[tag]
            except Exception:  # noqa: BLE001 - pydicom raises many types for values that do not fit their VR,
                # with the raw bytes in the message: drop the element, say so by keyword only
                del dataset[tag]
                walk.done.add((keyword, "removed"))
                walk.warnings.add(f"{keyword}: unreadable value removed")
                continue
            if depth == 0 and tag in _SET_AFTER_WALK:
                continue
            if references_only and element.VR not in _REFERENCE_VRS:
                del dataset[tag]  # an X/Z/U* item keeps its references (UIDs, numbers), nothing else
                walk.done.add((keyword, "removed"))
                continue
            self._apply(dataset, element, keyword, walk, depth, references_only)

    def _apply(self, dataset: Dataset, element: Any, keyword: str, walk: _Walk, depth: int,
               references_only: bool) -> None:
        tag, vr = int(element.tag), str(element.VR)
        action = profile_action(tag)
        if tag in RETAINED:
            _sanitise(element, keyword, walk)
        elif tag in _REMOVED or vr == "UN" or tag >> 16 in (0x0000, 0x0002) or (vr == "SQ" and (
                depth >= MAX_SEQUENCE_DEPTH or (action is not None and action.startswith("X")
                                                and action != "X/Z/U*"))):
            del dataset[element.tag]
            walk.done.add((keyword, "removed"))
        elif tag in _EMPTIED or (vr == "SQ" and action is not None and action != "X/Z/U*"):
            element.value = [] if vr == "SQ" else ""
            walk.done.add((keyword, "emptied"))
        elif vr == "SQ":
            for item in element.value:
                self._visit(item, walk, depth + 1, references_only or action == "X/Z/U*")
        elif vr == "UI":
            remapped = self._remap_value(element.value)
            if remapped != element.value:
                element.value = remapped
                walk.done.add((keyword, "remapped"))
        elif vr in ("DA", "DT"):
            self._shift(element, keyword, walk)
        elif vr == "TM":
            return  # times of day stay under the Modified Dates option
        elif action is not None:
            if action.startswith("X"):
                del dataset[element.tag]
                walk.done.add((keyword, "removed"))
            else:
                element.value = "" if vr in _STRING_VRS else None
                walk.done.add((keyword, "emptied"))
        elif vr == "PN" or (vr == "UR" and tag not in _CODE_URIS):
            if element.value:
                element.value = ""
                walk.done.add((keyword, "emptied"))
        elif vr in _TEXT_CAPS:
            _sanitise(element, keyword, walk)
        elif vr in _NUMBER_SYNTAX:
            _check_syntax(element, keyword, walk)

    def _remap_value(self, value: object) -> object:
        if value is None or value == "":
            return value
        if isinstance(value, str):
            return value if _DICOM_DEFINED_UID.fullmatch(value) else self.remap_uid(value)
        if isinstance(value, bytes) or not hasattr(value, "__iter__"):
            return self.remap_uid(str(value))
        return [self._remap_value(str(item)) for item in value]  # a multi-valued UI element

    def _shift(self, element: Any, keyword: str, walk: _Walk) -> None:
        value = element.value
        if value is None or value == "":
            return
        values = [value] if isinstance(value, str | bytes) else list(value)
        shifted = [_shift_one(str(item), element.VR, walk.offset) for item in values]
        if any(not result for result, item in zip(shifted, values, strict=True) if str(item).strip()):
            walk.warnings.add(f"{keyword}: unreadable date removed")
        element.value = shifted[0] if isinstance(value, str | bytes) else shifted
        walk.done.add((keyword, "shifted"))


def _read_text(dataset: Dataset, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "")
    except Exception:  # noqa: BLE001 - an unreadable value is treated as absent (the walk removes it)
        return ""


def _sanitise(element: Any, keyword: str, walk: _Walk) -> None:
    value, cap = element.value, _TEXT_CAPS.get(str(element.VR))
    if cap is None or value is None:
        return
    values = [value] if isinstance(value, str) else [str(item) for item in value]
    cleaned = [sanitise_text(item, cap) for item in values]
    if cleaned != values:
        element.value = cleaned[0] if isinstance(value, str) else cleaned
        walk.done.add((keyword, "sanitised"))


def _check_syntax(element: Any, keyword: str, walk: _Walk) -> None:
    """A kept DS, IS or AS value that is not a number or an age could carry text: it is emptied."""
    value = element.value
    values = [] if value is None else [value] if isinstance(value, str | int | float) else list(value)
    if any(not _NUMBER_SYNTAX[element.VR].fullmatch(str(item).strip()) for item in values if str(item).strip()):
        element.value = ""
        walk.done.add((keyword, "emptied"))
        walk.warnings.add(f"{keyword}: unreadable value removed")


def _cap_age(dataset: Dataset, done: set[tuple[str, str]]) -> None:
    age = _read_text(dataset, "PatientAge")
    if age.endswith("Y") and age[:-1].isdigit() and int(age[:-1]) > _MAX_AGE_YEARS:
        dataset.PatientAge = f"{_MAX_AGE_YEARS:03d}Y"
        done.add(("PatientAge", "replaced"))


def _shift_one(value: str, vr: str, offset: dt.timedelta) -> str:
    """The date moved back by ``offset``; "" when the value is not a readable DICOM date (DA, DT)."""
    text = value.strip()
    day, rest = text[:8], text[8:]
    if len(day) < 8 or not day.isdigit() or (vr == "DA" and rest) or not _DT_SUFFIX.fullmatch(rest):
        return ""  # unparseable dates are dropped, not passed through
    try:
        shifted = dt.datetime.strptime(day, "%Y%m%d") - offset
    except (ValueError, OverflowError):  # 20241315, or a year before 0001 once shifted
        return ""
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}{rest}"  # strftime drops %Y's zeros
