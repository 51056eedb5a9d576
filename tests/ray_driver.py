"""The driver of a study on the tests' Ray cluster, in a process of its own, as `medagent run` or a backend's worker
would be (a driver inside the long-lived test process saw its case workers die while starting). Prints one JSON
line per progress event; with ``--record-puts FOLDER`` it writes a pickle of every value it puts in Ray's object
store there, one file each.

    python -m tests.ray_driver STUDY STORE_URL HOME RUN_ID [--record-puts FOLDER]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
from pathlib import Path
from typing import Any

from medagent.config import Settings
from medagent.store import StudyStore
from medagent.studies import load_study
from medagent.studies.runner import run_study


class RecordingRay:
    """Ray as the driver's RayCases uses it, keeping a pickle of every value it puts in the object store."""

    def __init__(self, ray: Any, folder: Path) -> None:
        self._ray, self._folder = ray, folder

    def put(self, value: Any, **options: Any) -> Any:
        count = len(list(self._folder.iterdir()))
        (self._folder / f"put-{count:04d}.pickle").write_bytes(pickle.dumps(value))
        return self._ray.put(value, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ray, name)


def record_puts(folder: Path) -> None:
    from medagent.studies.ray_executor import RayCases

    opened = RayCases.__init__

    def recording(cases: RayCases, runner: Any, ray: Any, owns_connection: bool) -> None:
        opened(cases, runner, RecordingRay(ray, folder), owns_connection)

    RayCases.__init__ = recording  # type: ignore[method-assign,assignment]


async def main(study: Path, store_url: str, home: Path, run_id: str) -> None:
    config = load_study(study, allowed_prefixes=("medagent.", "tests."))
    with StudyStore.open(store_url, home) as store:
        async for event in run_study(config, store=store, settings=Settings(home=home), run_id=run_id):
            print(json.dumps({"kind": event.kind, "done": event.done, "failed": event.failed,
                              "case_id": event.case_id, "node_id": event.node_id, "attempts": event.attempts}),
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("study", "store_url", "home", "run_id"):
        parser.add_argument(name)
    parser.add_argument("--record-puts", type=Path)
    arguments = parser.parse_args()
    if arguments.record_puts is not None:
        record_puts(arguments.record_puts)
    asyncio.run(main(Path(arguments.study), arguments.store_url, Path(arguments.home), arguments.run_id))
