"""Service load: N sessions asking at once over ``medagent serve`` (Server-Sent Events) vs the same turns through
the library in-process, and a restart of the service in the middle of the run.

Every turn asks the scripted planner, which answers each call after L seconds (a served model's latency), to call
``read_dicom_header`` on a real CT slice the session uploaded, then answers: two planner calls and one tool call.
In one run, round by round (a round: one turn of every session at once), alternating: the library (N sessions on
one :class:`medagent.api.Agent`) and the service in a process of its own (N clients in this process, one event
stream per turn). A turn's latency is question to answer as its caller sees it; turns a restart cut are recovered
(never asked twice) and not timed. The restart: SIGTERM while turns are in flight (in the middle round), graceful
shutdown, the service started again on the same home; then every turn a client saw finish must be in its
session's history once, and every session must answer one more question. Goal: service p95 <= 1.5x library p95,
with zero errors, nothing lost or repeated.

    .venv/bin/python benchmarks/bench_service_load.py [--sessions 50] [--turns 4] [--latency 1.0] [--no-restart]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.service_clients import LoadReport, ServiceLoad
from benchmarks.service_load import (
    MAX_LATENCY_S,
    MAX_SESSIONS,
    MAX_TURNS,
    LibraryLoad,
    ServedProcess,
    TurnRecord,
    create_key,
    image_bytes,
)

GOAL = 1.5


def percentile(values: list[float], percent: float) -> float:
    """Nearest rank: the smallest value with at least ``percent`` % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def failed(record: TurnRecord) -> bool:
    """An error, no answer, or (for a turn answered in one go) events out of order."""
    return record.error is not None or record.answer is None or (record.recovered is None and not record.in_order)


def summary(records: list[TurnRecord]) -> dict[str, Any]:
    timed = [record.seconds for record in records if record.seconds is not None and not failed(record)]
    return {"turns": len(records), "timed": len(timed), "errors": sum(failed(record) for record in records),
            "p50_s": percentile(timed, 50) if timed else math.nan,
            "p95_s": percentile(timed, 95) if timed else math.nan, "max_s": max(timed, default=math.nan)}


def restart_lines(load: LoadReport, sessions: int) -> tuple[list[str], bool]:
    restart = load.restart
    if restart is None:
        return ["restart: none (--no-restart)"], True
    down = restart.down_s or 0.0
    drained = sum(1 for record in load.records if record.recovered is None and record.answered_at is not None
                  and restart.signalled_at < record.answered_at < restart.signalled_at + down)
    recovered = Counter(record.recovered for record in load.records if record.recovered is not None)
    graceful = restart.exit_status in (0, -signal.SIGTERM)
    lines = [(f"restart: SIGTERM at the start of tool call {restart.at_turn}; exit status {restart.exit_status} "
              f"({'graceful' if graceful else 'NOT graceful'}); down {down:.1f} s (signal to the new one's health)"),
             f"  turns finished during the shutdown: {drained}; cut and recovered: "
             + (", ".join(f"{how} {count}" for how, count in sorted(recovered.items())) or "none"),
             f"  history after the restart: {len(load.problems)} problems (finished turns lost, repeated or changed)",
             f"  sessions answering a question after the restart: {load.continued}/{sessions}"]
    lines += [f"    {problem}" for problem in load.problems[:10]]
    return lines, graceful and not load.problems and load.continued == sessions


@dataclass
class CpuSpent:
    """CPU seconds (all threads) and the turns they were spent on: steadier than wall time where other work shares
    the cores. The service's rounds around the restart are left out (two processes, one of them starting)."""

    library_s: float = 0.0
    library_turns: int = 0
    service_s: float = 0.0
    client_s: float = 0.0
    service_turns: int = 0


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used: /proc, Linux."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(home: Path, sessions: int, turns: int, latency: float, grace: float,
                  restart: bool) -> tuple[list[TurnRecord], LoadReport, CpuSpent]:
    """Library and service round by round (each round one turn of every session at once), so load that drifts
    over the run falls on both. The round after the restart goes to the service first: its requests meet the
    restart, and the library's round after it does not share the cores with the new process starting."""
    image = image_bytes()
    library_records: list[TurnRecord] = []
    service_records: list[TurnRecord] = []
    cpu = CpuSpent()
    restart_at = sessions * (turns // 2) + max(1, sessions // 2) if restart else None  # mid-run, mid-round
    async with LibraryLoad(home / "library", sessions, latency, image) as library:
        token = create_key(home / "service")
        with ServedProcess(home / "service", latency_s=latency, grace_s=grace) as served:
            load = ServiceLoad(served, token, image, sessions=sessions, turns=turns, restart_at=restart_at)

            async def service_round(turn: int, counted: bool) -> None:
                process, before, client = served.process, load.restart, time.process_time()
                server = process_cpu_s(process.pid) if counted and process is not None else 0.0
                service_records.extend(await load.round(ids, turn))
                if counted and process is not None and load.restart is before:  # no restart in the round
                    cpu.service_s += process_cpu_s(process.pid) - server
                    cpu.client_s += time.process_time() - client
                    cpu.service_turns += sessions

            async with load.connect() as load.client:
                ids = await load.open()
                after_restart = False
                for turn in range(turns):
                    restarted = load.restart is not None
                    if after_restart:
                        await service_round(turn, counted=False)
                    started = time.process_time()
                    library_records.extend(await library.round(turn))
                    cpu.library_s += time.process_time() - started
                    cpu.library_turns += sessions
                    if not after_restart:
                        await service_round(turn, counted=True)
                    after_restart = load.restart is not None and not restarted
                return library_records, await load.finish(ids, service_records), cpu


def main(sessions: int, turns: int, latency: float, grace: float, restart: bool) -> int:
    home = Path(tempfile.mkdtemp(prefix="bench-service-load-"))
    load_before = os.getloadavg()
    library, load, cpu = asyncio.run(measure(home, sessions, turns, latency, grace, restart))
    load_after = os.getloadavg()
    figures = {"library": summary(library), "service": summary(load.records)}
    ratio = figures["service"]["p95_s"] / figures["library"]["p95_s"]
    print(f"service load: {sessions} sessions x {turns} turns at once, planner latency {latency} s per call "
          f"(2 planner calls + 1 tool call a turn); {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'':10} {'turns':>6} {'timed':>6} {'errors':>6} {'p50 s':>8} {'p95 s':>8} {'max s':>8}")
    for name, row in figures.items():
        print(f"{name:10} {row['turns']:>6} {row['timed']:>6} {row['errors']:>6} {row['p50_s']:>8.3f} "
              f"{row['p95_s']:>8.3f} {row['max_s']:>8.3f}")
    added = {key: figures["service"][key] - figures["library"][key] for key in ("p50_s", "p95_s")}
    print(f"added by the service: p50 {added['p50_s'] * 1000:+.0f} ms, p95 {added['p95_s'] * 1000:+.0f} ms; "
          f"service wall time {load.wall_s:.1f} s")
    if cpu.library_turns and cpu.service_turns:
        print(f"CPU per turn: library {cpu.library_s / cpu.library_turns * 1000:.0f} ms; service "
              f"{cpu.service_s / cpu.service_turns * 1000:.0f} ms + its clients (this process) "
              f"{cpu.client_s / cpu.service_turns * 1000:.0f} ms ({cpu.service_turns} turns)")
    met = ratio <= GOAL
    print(f"p95 service / library: {ratio:.3f}x (goal <= {GOAL}x): {'met' if met else 'MISSED'}")
    lines, restart_ok = restart_lines(load, sessions)
    print("\n".join(lines))
    errors = figures["library"]["errors"] + figures["service"]["errors"]
    ok = met and restart_ok and errors == 0
    if ok:
        shutil.rmtree(home, ignore_errors=True)
    else:
        print(f"FAILED ({errors} errors); the service's home and logs: {home}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50, choices=range(1, MAX_SESSIONS + 1), metavar="N")
    parser.add_argument("--turns", type=int, default=4, choices=range(1, MAX_TURNS + 1), metavar="T",
                        help="turns per session")
    parser.add_argument("--latency", type=float, default=1.0, help=f"seconds per planner call, 0-{MAX_LATENCY_S}")
    parser.add_argument("--grace", type=float, default=30.0, help="the service's shutdown grace period, seconds")
    parser.add_argument("--no-restart", dest="restart", action="store_false", help="no restart in the middle")
    arguments = parser.parse_args()
    sys.exit(main(arguments.sessions, arguments.turns, arguments.latency, arguments.grace, arguments.restart))
