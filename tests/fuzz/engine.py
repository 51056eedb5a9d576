"""A small mutation fuzzer: byte and text mutations of real seed files, run under time and memory limits.

The invariant every target is held to: an input is accepted, or refused with a :class:`MedagentError`
(typed), within ``PER_INPUT_S`` seconds and the worker's address-space limit. Anything else (a raw
``ValueError``, ``RecursionError``, ``MemoryError``, a hang) is a finding; its input is saved so it can be
added to ``tests/fuzz/corpus/<target>/`` and replayed as a regression test.
"""

from __future__ import annotations

import hashlib
import random
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medagent.errors import MedagentError

PER_INPUT_S = 5.0
_INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_TOKENS = ("&a ", "*a", "<<: ", "!!python/object/apply:os.system ['id']", "!!binary AAAA", "{", "}", "[", "]",
           ": ", "- ", "\n", "\t", "'", '"', "? ", "1e999", "-1", "99999999999999999999", ".inf", ".nan", "~",
           "null", "\x00", "\u2028", "\ufeff", "\x1b[31m", "../../etc/passwd", "[" * 3000, "{\"a\":" * 3000,
           "a" * 70_000, ",", ";", "\r\n", "0", "true", "_target_: os.system", "kwargs: {a: *a}")


class FuzzTimeout(BaseException):
    """Raised by the interval timer inside a slow input (a BaseException so targets cannot swallow it)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise FuzzTimeout(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def mutate_bytes(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """1-4 stacked mutations, biased to the first kilobyte where headers live."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out = bytearray(rng.choice(seeds)[:64])
        limit = len(out) if rng.random() < 0.3 else min(len(out), 1024)
        at = rng.randrange(limit)
        kind = rng.randrange(8)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif kind == 2:
            width, order = rng.choice((2, 4)), rng.choice(("little", "big"))
            value = rng.choice(_INTERESTING_INTS) % (1 << (8 * width))
            out[at:at + width] = value.to_bytes(width, order)
        elif kind == 3:
            del out[rng.randrange(len(out)):]  # truncate
        elif kind == 4:
            del out[at:at + rng.randint(1, 64)]
        elif kind == 5:
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randint(1, 256)]
        elif kind == 6:
            out[at:at] = rng.randbytes(rng.randint(1, 32))
        else:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other)) if other else 0
            out = out[:at] + bytearray(other[cut:])
    return bytes(out)


def mutate_text(text: str, rng: random.Random, seeds: list[bytes]) -> bytes:
    """Line and token mutations of a text seed (YAML, JSON, CSV); sometimes raw byte mutations."""
    if rng.random() < 0.2:
        return mutate_bytes(text.encode("utf-8"), rng, seeds)
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        if not lines:
            lines = [""]
        at = rng.randrange(len(lines))
        kind = rng.randrange(6)
        if kind == 0:
            lines.insert(at, lines[rng.randrange(len(lines))])
        elif kind == 1 and len(lines) > 1:
            del lines[at]
        elif kind == 2:
            other = rng.randrange(len(lines))
            lines[at], lines[other] = lines[other], lines[at]
        elif kind == 3:
            lines[at] = " " * rng.choice((1, 2, 4)) + lines[at] if rng.random() < 0.5 else lines[at].lstrip()
        elif kind == 4:
            line = lines[at]
            cut = rng.randrange(len(line) + 1)
            lines[at] = line[:cut] + rng.choice(_TOKENS) + line[cut:]
        else:
            line = lines[at]
            digits = [i for i, c in enumerate(line) if c.isdigit()]
            if digits:
                i = rng.choice(digits)
                lines[at] = line[:i] + rng.choice(("999999999999", "-5", "0", "1e9", "0.0")) + line[i + 1:]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@dataclass
class Target:
    """``run(data)`` feeds one input to medagent; ``text`` picks text mutations."""

    name: str
    seeds: list[bytes]
    run: Callable[[bytes], object]
    text: bool = False
    mutate: Callable[[bytes, random.Random, list[bytes]], bytes] | None = None


@dataclass
class Finding:
    target: str
    kind: str
    where: str
    input_sha: str


@dataclass
class Stats:
    executions: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    typed: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


def check_one(target: Target, data: bytes) -> tuple[str, str] | None:
    """None when the input was accepted or refused with a typed error; else (kind, where)."""
    try:
        with deadline(PER_INPUT_S):
            target.run(data)
    except MedagentError:
        return None
    except FuzzTimeout:
        return "timeout", "slower than the per-input limit"
    except BaseException as exc:  # noqa: BLE001 - any other exception is what the fuzzer is looking for
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "/medagent/" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        return type(exc).__name__, where
    return None


def fuzz(target: Target, seconds: float, rng: random.Random, stats: Stats, found_dir: Path) -> None:
    """Mutate ``target``'s seeds for ``seconds``; save each input whose (kind, where) is new."""
    seen: set[tuple[str, str]] = set()
    started = time.monotonic()
    executions = typed = 0
    inputs = iter(target.seeds)  # every seed once, unmutated, first
    while time.monotonic() - started < seconds:
        data = next(inputs, None)
        if data is None:
            seed = rng.choice(target.seeds)
            mutate = target.mutate or (lambda d, r, s: mutate_text(d.decode("utf-8", "replace"), r, s)
                                       if target.text else mutate_bytes(d, r, s))
            data = mutate(seed, rng, target.seeds)
        result = check_one(target, data)
        executions += 1
        if result is None:
            typed += 1
            continue
        if result not in seen:
            seen.add(result)
            sha = hashlib.sha256(data).hexdigest()[:16]
            (found_dir / target.name).mkdir(parents=True, exist_ok=True)
            (found_dir / target.name / sha).write_bytes(data)
            stats.findings.append(Finding(target.name, result[0], result[1], sha))
    stats.executions[target.name] = executions
    stats.seconds[target.name] = round(time.monotonic() - started, 2)
    stats.typed[target.name] = typed
