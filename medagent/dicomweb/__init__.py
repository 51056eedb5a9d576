"""PACS in and out over DICOMweb: pull a study or series into a session (QIDO-RS, WADO-RS; de-identified on
arrival), push results back (DICOM SEG and SR by STOW-RS) referencing the source instances.

    async with Agent(...) as agent:
        session = agent.session()
        pull = await pull_study(session, "http://pacs:8042/dicom-web", study_uid)
        answer = await session.ask("Outline the lung fields.")
        stored = await push_results(pull, answer.tool_calls, agent.toolbox.store)

highdicom is imported only when a SEG or SR is built.
"""

from medagent.dicomweb.client import DicomwebClient, DicomwebLimits, SeriesInfo
from medagent.dicomweb.errors import (
    DicomwebError,
    DicomwebNotFound,
    DicomwebRejected,
    DicomwebResponseInvalid,
    DicomwebServerError,
    DicomwebTimeout,
    DicomwebTooLarge,
    DicomwebUnavailable,
    InvalidDicomwebRequest,
)
from medagent.dicomweb.export import PushResult, push_results
from medagent.dicomweb.pull import PacsPull, SourceImage, pull_study

__all__ = ["DicomwebClient", "DicomwebError", "DicomwebLimits", "DicomwebNotFound", "DicomwebRejected",
           "DicomwebResponseInvalid", "DicomwebServerError", "DicomwebTimeout", "DicomwebTooLarge",
           "DicomwebUnavailable", "InvalidDicomwebRequest", "PacsPull", "PushResult", "SeriesInfo", "SourceImage",
           "pull_study", "push_results"]
