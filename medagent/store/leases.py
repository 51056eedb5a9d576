"""Run leases: at most one live runner computes a run at a time.

A runner takes the lease when it creates or resumes a run, refreshes it while it works and
releases it when it stops. The lease names its owner (``host@pidns:pid:random``) and expires
``ttl_s`` after its last refresh, so a runner killed with SIGKILL blocks nobody for long; on
the same host a lease whose process is gone is taken over at once (kill, then resume).
Taking a lease happens inside the caller's write transaction: SQLite's ``BEGIN IMMEDIATE``
and PostgreSQL's row lock (``FOR UPDATE``, or the primary key for a first insert) make two
runners racing for one run see each other.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from typing import Any, Final

from sqlalchemy import Connection, Table, delete, select, update

from medagent.store.records import RunInProgress, now, utc
from medagent.store.tables import RunLeaseRow

DEFAULT_LEASE_TTL_S: Final = 60.0
_LEASES: Table = RunLeaseRow.__table__  # type: ignore[attr-defined]


def this_host() -> str:
    """The host part of a lease owner: the host name and, on Linux, the PID namespace. Containers that share a
    host name (host networking) but not their process ids must not read each other's pids as their own."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        namespace = ""
    return socket.gethostname()[:120] + (f"@{namespace[:40]}" if namespace else "")


def new_owner() -> str:
    """A lease owner id unique to this process and call."""
    return f"{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _process_gone(owner: str) -> bool:
    """True when ``owner`` was a process of this host (and PID namespace) that no longer exists."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != this_host() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _refuse(run_id: str) -> RunInProgress:
    return RunInProgress(f"run {run_id!r} is being computed by another runner; wait for it to finish "
                         "(or, if that runner was killed on another machine, until its lease expires)",
                         run_id=run_id)


def take(connection: Connection, insert: Any, run_id: str, owner: str, ttl_s: float) -> None:
    """Hold ``run_id``'s lease for ``owner`` (inside the caller's write transaction); RunInProgress when
    a live runner holds it."""
    expires = now() + dt.timedelta(seconds=ttl_s)
    held = connection.execute(select(_LEASES.c.owner, _LEASES.c.expires_at).where(_LEASES.c.run_id == run_id)
                              .with_for_update()).first()
    if held is None:
        inserted = connection.execute(insert.values(run_id=run_id, owner=owner, expires_at=expires)
                                      .on_conflict_do_nothing(index_elements=["run_id"])
                                      .returning(_LEASES.c.run_id)).scalar_one_or_none()
        if inserted is None:  # PostgreSQL: another runner inserted it since our select
            raise _refuse(run_id)
        return
    holder, until = held
    expired = (utc(until) or now()) <= now()
    if holder != owner and not expired and not _process_gone(holder):
        raise _refuse(run_id)
    connection.execute(update(_LEASES).where(_LEASES.c.run_id == run_id).values(owner=owner, expires_at=expires))


def renew(connection: Connection, run_id: str, owner: str, ttl_s: float) -> None:
    """Extend ``owner``'s lease; RunInProgress when it was lost (it expired and another runner took it)."""
    changed = connection.execute(update(_LEASES).where((_LEASES.c.run_id == run_id) & (_LEASES.c.owner == owner))
                                 .values(expires_at=now() + dt.timedelta(seconds=ttl_s))).rowcount
    if changed == 0:
        raise _refuse(run_id)


def release(connection: Connection, run_id: str, owner: str) -> None:
    connection.execute(delete(_LEASES).where((_LEASES.c.run_id == run_id) & (_LEASES.c.owner == owner)))
