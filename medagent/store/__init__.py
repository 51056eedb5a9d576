"""The SQL result store of studies: runs, cases, planner messages, tool calls and metrics.

``StudyStore.open(None, home)`` opens ``<home>/studies.sqlite``; a ``postgresql://`` URL opens
PostgreSQL through psycopg 3. See :mod:`medagent.store.study_store` for the write guarantees
and :mod:`medagent.store.tables` for the tables and their schema version.
"""

from medagent.store.records import (
    CaseError,
    CaseRecord,
    CaseResult,
    CaseStatus,
    CaseWrite,
    ConfigChanged,
    MetricValue,
    RunExists,
    RunInProgress,
    RunRecord,
    RunStatus,
    StoredToolCall,
    StoreError,
    StoreSchemaMismatch,
    StoreUnavailable,
    ToolCallRecord,
    UnknownRun,
)
from medagent.store.study_store import CaseEntry, CaseKey, StudyStore
from medagent.store.tables import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "CaseEntry",
    "CaseError",
    "CaseKey",
    "CaseRecord",
    "CaseResult",
    "CaseStatus",
    "CaseWrite",
    "ConfigChanged",
    "MetricValue",
    "RunExists",
    "RunInProgress",
    "RunRecord",
    "RunStatus",
    "StoreError",
    "StoreSchemaMismatch",
    "StoreUnavailable",
    "StoredToolCall",
    "StudyStore",
    "ToolCallRecord",
    "UnknownRun",
]
