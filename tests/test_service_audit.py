"""The service's audit log (a hash chain whose every broken link ``medagent audit verify`` finds), its API keys
(scrypt hashes, revocation at once) and its token buckets."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from medagent.service.audit import GENESIS, AuditEntry, AuditLog, ModelUse, ToolUse, record_hash, sha256_hex
from medagent.service.db import ServiceDatabase
from medagent.service.keys import KeyStore, secret_matches
from medagent.service.ratelimit import RateLimiter, retry_after_header
from tests.service_parts import cli

RECORDS = 8


def _open(home: Path) -> tuple[ServiceDatabase, AuditLog]:
    database = ServiceDatabase.open(None, home, [*AuditLog.TABLES, *KeyStore.TABLES])
    return database, AuditLog(database)


def _entry(number: int) -> AuditEntry:
    return AuditEntry(kind="turn" if number % 2 else "request", key_id="0123456789ab", request_id=f"r{number}",
                      endpoint="POST /v1/sessions/{session_id}/messages", status=200, session_id="s1",
                      inputs={"question_sha256": sha256_hex(f"question {number}")},
                      tools=[ToolUse(tool="locate_lungs", arguments_sha256=sha256_hex("{}"), ok=True)],
                      models=[ModelUse(role="expert", id="medagent/lungs-v1", weights_sha256="cd" * 32)])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    database, log = _open(tmp_path / "home")
    for number in range(1, RECORDS + 1):
        log.append(_entry(number))
    database.close()
    return tmp_path / "home"


def _tamper(home: Path, *statements: str) -> None:
    with sqlite3.connect(home / "service.sqlite") as connection:
        for statement in statements:
            connection.execute(statement)


def _swap(first: int, second: int) -> tuple[str, ...]:
    return (f"UPDATE service_audit SET seq = -1 WHERE seq = {first}",
            f"UPDATE service_audit SET seq = {first} WHERE seq = {second}",
            f"UPDATE service_audit SET seq = {second} WHERE seq = -1")


def _rehashed(home: Path, seq: int) -> tuple[str, ...]:
    """Alter record ``seq`` and give it the hash its new content has (a forger who knows the scheme)."""
    with sqlite3.connect(home / "service.sqlite") as connection:
        connection.row_factory = sqlite3.Row
        row = dict(connection.execute("SELECT * FROM service_audit WHERE seq = ?", (seq,)).fetchone())
    row.update({key: json.loads(row[key]) for key in ("inputs", "tools", "models")}, status=404)
    return (f"UPDATE service_audit SET status = 404, hash = '{record_hash(row)}' WHERE seq = {seq}",)


def _forged_at_end(home: Path) -> tuple[str, ...]:
    """A well-formed record appended after the last one, chained and hashed right, but not through the log."""
    with sqlite3.connect(home / "service.sqlite") as connection:
        connection.row_factory = sqlite3.Row
        row = dict(connection.execute("SELECT * FROM service_audit WHERE seq = ?", (RECORDS,)).fetchone())
    row.update({key: json.loads(row[key]) for key in ("inputs", "tools", "models")}, seq=RECORDS + 1,
               prev_hash=row["hash"])
    forged = record_hash(row)
    return ((f"INSERT INTO service_audit SELECT {RECORDS + 1}, at, kind, key_id, request_id, endpoint, status, "
            f"outcome, session_id, inputs, tools, models, hash, '{forged}' FROM service_audit WHERE seq = {RECORDS}"),)


TAMPERING: dict[str, tuple[Callable[[Path], tuple[str, ...]], int, str]] = {
    "altered": (lambda _h: ("UPDATE service_audit SET endpoint = 'GET /v1/sessions' WHERE seq = 3",), 3, "altered"),
    "altered json": (lambda _h: ("UPDATE service_audit SET models = '[]' WHERE seq = 5",), 5, "altered"),
    "deleted": (lambda _h: ("DELETE FROM service_audit WHERE seq = 4",), 4, "missing"),
    "deleted first": (lambda _h: ("DELETE FROM service_audit WHERE seq = 1",), 1, "missing"),
    "deleted last": (lambda _h: (f"DELETE FROM service_audit WHERE seq = {RECORDS}",), RECORDS, "missing"),
    "reordered": (lambda _h: _swap(3, 4), 3, "moved"),
    "reordered far": (lambda _h: _swap(2, 7), 2, "moved"),
    "deleted and renumbered": (lambda _h: ("DELETE FROM service_audit WHERE seq = 6",
                                           "UPDATE service_audit SET seq = seq - 1 WHERE seq > 6"), 6, "moved"),
    "rehashed": (lambda h: _rehashed(h, 3), 4, "unlinked"),
    "appended outside": (lambda _h: ((f"INSERT INTO service_audit SELECT {RECORDS + 1}, at, kind, key_id, request_id, "
                                     "endpoint, status, outcome, session_id, inputs, tools, models, hash, hash "
                                     f"FROM service_audit WHERE seq = {RECORDS}"),), RECORDS + 1, "altered"),
    "forged at the end": (_forged_at_end, RECORDS + 1, "head"),
    "head removed": (lambda _h: ("DELETE FROM service_audit_head",), RECORDS, "head"),
}


def test_an_intact_log_verifies_and_names_its_head(home: Path) -> None:
    code, output = cli(home, "audit", "verify", "--json")
    assert code == 0, output
    assert f'"records":{RECORDS}' in output.replace(" ", "") and '"ok":true' in output.replace(" ", "")
    _database, log = _open(home)
    records = log.tail(RECORDS)
    assert records[0].prev_hash == GENESIS and [r.seq for r in records] == list(range(1, RECORDS + 1))
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(records))


@pytest.mark.parametrize("how", list(TAMPERING))
def test_audit_verify_reports_the_first_broken_link(home: Path, how: str) -> None:
    statements, broken_at, problem = TAMPERING[how]
    _tamper(home, *statements(home))
    code, output = cli(home, "audit", "verify")
    assert code == 1, output
    assert f"broken at record {broken_at} ({problem})" in " ".join(output.split()), output


def test_concurrent_appends_from_threads_and_processes_keep_one_chain(tmp_path: Path) -> None:
    database, log = _open(tmp_path / "home")
    second_database, second_log = _open(tmp_path / "home")  # another engine on the same file: another process

    def write(target: AuditLog) -> None:
        for number in range(20):
            target.append(_entry(number))

    threads = [threading.Thread(target=write, args=(target,)) for target in (log, second_log, log, second_log)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = log.verify()
    assert result.ok and result.records == 80 and result.head_seq == 80
    database.close()
    second_database.close()


def test_keys_verify_only_with_their_secret_and_stop_at_once_when_revoked(tmp_path: Path) -> None:
    database = ServiceDatabase.open(None, tmp_path / "home", KeyStore.TABLES)
    keys, other_process = KeyStore(database), KeyStore(database)
    created = keys.create("clinic-a", rate_per_s=2.0, burst=5)
    principal = keys.verify(created.token)
    assert principal is not None and principal.key_id == created.info.key_id and principal.burst == 5
    key_id, secret = created.token.split("_", 2)[1:]
    assert keys.verify(f"mak_{key_id}_{'A' * 43}") is None
    assert keys.verify(created.token + "A") is None and keys.verify("") is None
    assert keys.verify(f"mak_{'f' * 12}_{secret}") is None  # the secret of one key does not open another id
    assert other_process.verify(created.token) is not None
    keys.revoke(key_id)
    assert keys.verify(created.token) is None and other_process.verify(created.token) is None
    assert [item.revoked_at is not None for item in keys.all()] == [True]
    with pytest.raises(Exception, match="no API key"):
        keys.revoke("0" * 12)
    with pytest.raises(Exception, match="key name"):
        keys.create("../etc")
    # a tampered hash with an absurd cost is refused, not computed
    assert not secret_matches(secret, "scrypt$1099511627776$8$1$AAAA$AAAA")
    assert not secret_matches(secret, "bcrypt$whatever")
    database.close()


def test_token_buckets_refill_at_their_rate_and_say_when_to_come_back() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, 3, max_buckets=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert retry_after_header(0.5) == "1" and retry_after_header(2.01) == "3"
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") > 0
    assert limiter.acquire("b", rate_per_s=0.1, burst=1) == 0.0
    assert limiter.acquire("b", rate_per_s=0.1, burst=1) == pytest.approx(10.0)
    now[0] += 60  # a long pause fills a bucket to its burst, never beyond
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0
    limiter.acquire("c")  # past max_buckets the least recently used is forgotten (it comes back full)
    assert limiter.acquire("b", rate_per_s=0.1, burst=1) == 0.0
    with pytest.raises(ValueError, match="positive rate"):
        RateLimiter(0, 1)
