"""A guard that ties a server process's life to its parent's, whatever signal ends the parent.

    python -m medagent.agents.server_guard [--remove-log FILE] -- COMMAND...

medagent starts the guard with a pipe on its stdin and keeps the write end open for as long as it
lives. When medagent exits - cleanly, by an exception, by SIGTERM or by SIGKILL - the kernel closes
that end and the guard reads end-of-file: it stops the server (SIGTERM, then SIGKILL) and exits. The
guard is single-threaded, so it can safely ask the kernel (``PR_SET_PDEATHSIG``) to SIGKILL the server
should the guard itself be killed. If the server exits on its own, the guard exits with its status.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0


def _die_with_parent() -> None:
    """Runs in the forked child before exec: the kernel sends SIGKILL when the guard dies (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _parent_gone(stdin_fd: int, timeout_s: float) -> bool:
    """True once the parent's end of the stdin pipe is closed (end-of-file, or an error reading it)."""
    readable, _, _ = select.select([stdin_fd], [], [], timeout_s)
    if not readable:
        return False
    try:
        return os.read(stdin_fd, 4096) == b""  # anything written is ignored; only EOF matters
    except OSError:
        return True


def guard(command: list[str], remove_log: Path | None = None) -> int:
    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    # preexec_fn is safe here: the guard is single-threaded
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: PLW1509
    stopped_by_us = True
    try:
        while server.poll() is None:
            if _parent_gone(sys.stdin.fileno(), 0.5):
                break
        else:
            stopped_by_us = False  # the server exited on its own: its log says why, keep it
        return server.returncode if server.returncode is not None else 0
    finally:
        _stop(server)
        if stopped_by_us and remove_log is not None:
            remove_log.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medagent.agents.server_guard")
    parser.add_argument("--remove-log", type=Path, default=None, help="a log file to delete after a normal stop")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    command = arguments.command[1:] if arguments.command[:1] == ["--"] else arguments.command
    if not command:
        parser.error("give the server command after --")
    return guard(command, arguments.remove_log)


if __name__ == "__main__":
    sys.exit(main())
