"""A case worker process of ``executor: processes`` (``python -m medagent.studies.process_worker``).

It speaks with its driver over its standard input and output in frames (a 4-byte length, then a pickle): first
the study (its configuration with this worker's share of the limits), the store URL and the settings, answered
by ``("ready", pid)``; then ``("case", n, run_id, item)`` frames, each answered by ``("done", n, outcome)`` as
soon as the case is computed, several cases at once; ``("close",)`` or the end of input stops it. Only the driver
writes to the store. The pipe is the worker's own, set up by its parent: the frames are trusted (pickle).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import sys
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 256 * 1024 * 1024  # a case's messages and tool records, whole; far past any real one
_LENGTH = struct.Struct(">I")


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; None at the end of the stream."""
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError:
        return None
    (size,) = _LENGTH.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {size} bytes is over the bound")
    return pickle.loads(await reader.readexactly(size))


def frame(value: Any) -> bytes:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {len(payload)} bytes is over the bound")
    return _LENGTH.pack(len(payload)) + payload


class _Replies:
    """Frames to the driver, written in order from the event loop's thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def send(self, value: Any) -> None:
        self.stream.write(frame(value))
        self.stream.flush()


async def _serve(reader: asyncio.StreamReader, replies: _Replies) -> None:
    from medagent.store import StudyStore
    from medagent.studies.runner import StudyRunner

    start = await read_frame(reader)
    if start is None:
        return
    config, store_url, settings = start
    store = StudyStore.open(store_url, settings.home)
    try:
        runner = StudyRunner(config, store, settings)
    except BaseException:
        store.close()
        raise
    cases: set[asyncio.Task[None]] = set()

    async def one(number: int, run_id: str, item: Any) -> None:
        try:
            outcome = await runner.execute_one(run_id, item)
        except Exception as exc:  # execute_one records a case's failure; anything else is the worker's
            logger.exception("case %s failed in its worker", getattr(item, "key", "?"))
            replies.send(("failed", number, type(exc).__name__))
            return
        replies.send(("done", number, outcome))

    try:
        replies.send(("ready", os.getpid()))
        while (message := await read_frame(reader)) is not None and message[0] == "case":
            _, number, run_id, item = message
            task = asyncio.create_task(one(number, run_id, item))
            cases.add(task)
            task.add_done_callback(cases.discard)
    finally:
        for task in list(cases):
            task.cancel()
        await asyncio.gather(*cases, return_exceptions=True)
        await runner.aclose()
        runner.toolbox.close()
        store.close()


async def _main() -> None:
    # the frames go out on the original standard output; anything else a library prints goes to standard error
    replies = _Replies(os.fdopen(os.dup(sys.stdout.fileno()), "wb"))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    reader = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    await _serve(reader, replies)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_main())
    # everything it holds is closed: skip the interpreter's teardown of torch and friends (seconds), which the
    # driver would wait for at the end of every run
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)
