"""The service's audit log: append-only, hash-chained, in the SQL store, free of patient data.

Each record says who (the API key's id), what (the endpoint as routed, the tools called with the SHA-256
of their arguments, the SHA-256 of the inputs: a question's text, an upload's bytes; an approval's decision),
which models (the planner's id as its server reported it, each expert's model id and weight hash) and when.
Values are never recorded, only hashes: no question, no file, no DICOM attribute reaches the log.

The chain: record ``n`` stores the hash of record ``n - 1`` (``prev_hash``; the first one :data:`GENESIS`)
and its own ``hash``, the SHA-256 of its canonical JSON (sorted keys, no spaces, ASCII) with ``prev_hash``
in it and ``hash`` left out. A head row holds the last sequence number and hash, written in the same
transaction as the record, so records removed from the end are found too. :meth:`AuditLog.verify` walks
the log in order and reports the first broken link: a missing record, an altered one, one moved to
another place, or one that does not follow its predecessor. Copy the head hash it prints somewhere else
to anchor the log against someone rewriting all of it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final, Literal

from pydantic import BaseModel, Field
from sqlalchemy import JSON, Column, select, update
from sqlmodel import Field as SqlField
from sqlmodel import SQLModel, col

from medagent.service.db import ServiceDatabase, table, utc_now
from medagent.store.records import StoreError

GENESIS: Final = "0" * 64
_HEAD_ID: Final = 1
_PAGE: Final = 1000
_MOVED_WINDOW: Final = 64  # how far from its place a moved record is looked for
Problem = Literal["missing", "altered", "moved", "unlinked", "head"]
_SHA256 = r"^[0-9a-f]{64}$"


class AuditLogBroken(StoreError):
    """The audit log cannot be appended to as it stands (its head row is gone); ``medagent audit verify`` says more."""

    code = "audit_log_broken"


class ToolUse(BaseModel):
    tool: str = Field(max_length=200)
    arguments_sha256: str = Field(pattern=_SHA256)
    ok: bool
    error_code: str | None = Field(default=None, max_length=100)


class ModelUse(BaseModel):
    role: Literal["planner", "expert"]
    id: str = Field(max_length=300)
    weights_sha256: str | None = Field(default=None, max_length=128)


class AuditEntry(BaseModel):
    """What happened, as a caller hands it in (the log adds the sequence number, time and hashes)."""

    kind: Literal["request", "turn"] = "request"
    key_id: str | None = Field(default=None, max_length=32)
    request_id: str | None = Field(default=None, max_length=64)
    endpoint: str = Field(max_length=200)
    status: int | None = Field(default=None, ge=100, le=599)
    outcome: str | None = Field(default=None, max_length=100)
    session_id: str | None = Field(default=None, max_length=128)
    inputs: dict[str, str] = Field(default_factory=dict, max_length=16)
    tools: list[ToolUse] = Field(default_factory=list, max_length=64)
    models: list[ModelUse] = Field(default_factory=list, max_length=64)


class AuditRecord(AuditEntry):
    seq: int
    at: str
    prev_hash: str
    hash: str


class Verification(BaseModel):
    ok: bool
    records: int = Field(description="records read before the first problem (all of them when ok)")
    head_seq: int | None
    head_hash: str | None
    broken_seq: int | None = None
    problem: Problem | None = None
    message: str | None = None


class AuditRow(SQLModel, table=True):
    __tablename__ = "service_audit"

    seq: int = SqlField(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: str = SqlField(max_length=40)
    kind: str = SqlField(max_length=16)
    key_id: str | None = SqlField(default=None, index=True, max_length=32)
    request_id: str | None = SqlField(default=None, max_length=64)
    endpoint: str = SqlField(max_length=200)
    status: int | None = None
    outcome: str | None = SqlField(default=None, max_length=100)
    session_id: str | None = SqlField(default=None, index=True, max_length=128)
    inputs: dict[str, Any] | None = SqlField(default=None, sa_column=Column(JSON))
    tools: list[Any] | None = SqlField(default=None, sa_column=Column(JSON))
    models: list[Any] | None = SqlField(default=None, sa_column=Column(JSON))
    prev_hash: str = SqlField(max_length=64)
    hash: str = SqlField(max_length=64)


class AuditHeadRow(SQLModel, table=True):
    __tablename__ = "service_audit_head"

    id: int = SqlField(primary_key=True)
    seq: int
    hash: str = SqlField(max_length=64)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def record_hash(content: dict[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON, its ``hash`` field left out."""
    fields = {key: value for key, value in content.items() if key != "hash"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                           default=str)
    return sha256_hex(canonical)


class AuditLog:
    TABLES: Final = [table(AuditRow), table(AuditHeadRow)]

    def __init__(self, database: ServiceDatabase) -> None:
        self.database = database
        heads, records = table(AuditHeadRow), table(AuditRow)
        with database.writing() as connection:  # a new log gets its head; a log that lost it is not repaired
            if (connection.execute(select(heads.c.id).where(heads.c.id == _HEAD_ID)).first() is None
                    and connection.execute(select(records.c.seq).limit(1)).first() is None):
                connection.execute(heads.insert().values(id=_HEAD_ID, seq=0, hash=GENESIS))

    def append(self, entry: AuditEntry) -> AuditRecord:
        """Add a record at the end of the chain (one writer at a time: the head row is locked first)."""
        heads, records = table(AuditHeadRow), table(AuditRow)
        with self.database.writing() as connection:
            query = select(heads.c.seq, heads.c.hash).where(heads.c.id == _HEAD_ID)
            if self.database.backend == "postgresql":
                query = query.with_for_update()
            head = connection.execute(query).first()
            if head is None:
                raise AuditLogBroken("the audit log's head row is missing: run medagent audit verify")
            content = {**entry.model_dump(mode="json"), "seq": head.seq + 1, "at": utc_now(),
                       "prev_hash": head.hash}
            content["hash"] = record_hash(content)
            connection.execute(records.insert().values(**content))
            connection.execute(update(heads).where(heads.c.id == _HEAD_ID).values(seq=content["seq"],
                                                                                  hash=content["hash"]))
        return AuditRecord.model_validate(content)

    def tail(self, count: int) -> list[AuditRecord]:
        """The last ``count`` records, oldest first."""
        records = table(AuditRow)
        with self.database.reading() as connection:
            rows = connection.execute(select(records).order_by(col(AuditRow.seq).desc()).limit(count)).mappings()
            return [AuditRecord.model_validate(dict(row)) for row in reversed(list(rows))]

    def verify(self) -> Verification:
        """Walk the whole log in order; the first broken link ends the walk."""
        records, heads = table(AuditRow), table(AuditHeadRow)
        with self.database.reading() as connection:
            head = connection.execute(select(heads.c.seq, heads.c.hash).where(heads.c.id == _HEAD_ID)).first()
        head_seq, head_hash = (head.seq, head.hash) if head is not None else (None, None)

        def broken(count: int, seq: int | None, problem: Problem, message: str) -> Verification:
            return Verification(ok=False, records=count, head_seq=head_seq, head_hash=head_hash, broken_seq=seq,
                                problem=problem, message=message)

        previous_seq, previous_hash, count = 0, GENESIS, 0
        while True:
            with self.database.reading() as connection:
                page = [dict(row) for row in connection.execute(
                    select(records).where(records.c.seq > previous_seq).order_by(records.c.seq).limit(_PAGE)
                ).mappings()]
            for row in page:
                seq, expected = row["seq"], previous_seq + 1
                if seq != expected:
                    return broken(count, expected, "missing", f"records {expected} to {seq - 1} are missing")
                if record_hash(row) != row["hash"]:
                    written_at = _written_at(row)
                    if written_at is not None:
                        return broken(count, seq, "moved", f"record {seq} was written as record {written_at}: "
                                                           "records were reordered, or removed and renumbered")
                    return broken(count, seq, "altered", f"record {seq} was altered after it was written")
                if row["prev_hash"] != previous_hash:
                    return broken(count, seq, "unlinked", f"record {seq} does not follow record {seq - 1}: a "
                                                          "record was replaced or inserted")
                previous_seq, previous_hash, count = seq, row["hash"], count + 1
            if len(page) < _PAGE:
                break
        if head is None:
            return broken(count, previous_seq, "head", "the log's head row is missing")
        if head_seq is not None and previous_seq < head_seq:
            return broken(count, previous_seq + 1, "missing", f"records {previous_seq + 1} to {head_seq} are missing "
                                                              "from the end of the log")
        if (previous_seq, previous_hash) != (head_seq, head_hash):
            return broken(count, previous_seq, "head", "the log's last record is not the one the head row names: "
                                                       "records were added or changed outside the log")
        return Verification(ok=True, records=count, head_seq=head_seq, head_hash=head_hash)


def _written_at(row: dict[str, Any]) -> int | None:
    """The sequence number near this row's at which its content hashes to its stored hash (it was moved)."""
    seq = int(row["seq"])
    for candidate in range(max(1, seq - _MOVED_WINDOW), seq + _MOVED_WINDOW + 1):
        if candidate != seq and record_hash({**row, "seq": candidate}) == row["hash"]:
            return candidate
    return None
