"""Cold start of `medagent chat` to its prompt, in a real pseudo-terminal, experts not loaded.

Measures wall time from process start until the `you>` prompt appears, several times, and checks
that no expert weights were loaded on the way (the process never imports torch before the prompt).
Goal: < 3 s.

    .venv/bin/python benchmarks/bench_cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(home: str) -> float:
    primary, secondary = pty.openpty()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "medagent.cli", "chat"], stdin=secondary, stdout=secondary,
                               stderr=secondary, env={**os.environ, "MEDAGENT_HOME": home}, close_fds=True)
    os.close(secondary)
    seen = b""
    try:
        while b"you>" not in seen:
            ready, _, _ = select.select([primary], [], [], 30)
            if not ready:
                raise TimeoutError(f"no prompt within 30 s; output: {seen[-500:]!r}")
            seen += os.read(primary, 4096)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)
        os.close(primary)


def main(runs: int) -> dict[str, object]:
    home = tempfile.mkdtemp()
    one_run(home)  # first run creates the data folder and key; not counted
    times = [one_run(home) for _ in range(runs)]
    probe = subprocess.run([sys.executable, "-X", "importtime", "-c", "import medagent.cli.main, medagent.api"],
                           capture_output=True, text=True)
    torch_at_start = any(line.rstrip().endswith(" torch") for line in probe.stderr.splitlines())
    return {"runs": runs, "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2),
            "torch_imported_before_prompt": torch_at_start, "goal": "< 3 s"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    print(json.dumps(main(parser.parse_args().runs), indent=2))
