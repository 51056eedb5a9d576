"""What every conformance suite shares: named checks, a report, and a pytest helper.

A suite is a class whose checks are ``async def check_<name>(self) -> None`` methods. A check raises
``AssertionError`` with a message saying what the implementation did wrong, or :class:`NotApplicable` when
the subject declares nothing it could be checked on. Nothing here imports pytest at import time.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    import pytest

T = TypeVar("T")


class NotApplicable(Exception):
    """Raised by a check whose subject gives it nothing to check (e.g. a tool that takes no image)."""


@dataclass
class Report:
    """The outcome of a suite run: per check, passed, failed (with its message) or not applicable."""

    suite: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        """``AssertionError`` listing every failed check (the suite's name first), when any failed."""
        if self.failed:
            lines = [f"- {name}: {message}" for name, message in self.failed.items()]
            total = len(self.passed) + len(self.failed)
            raise AssertionError(f"{self.suite}: {len(self.failed)} of {total} checks failed\n" + "\n".join(lines))


class Conformance:
    """Base of the suites. ``await suite.verify()`` runs every check and raises on any failure;
    ``await suite.run("name")`` runs one. Check names are the method names without ``check_``."""

    order: ClassVar[tuple[str, ...]] = ()  # checks that must run first (e.g. nothing loaded yet), then the rest

    @property
    def label(self) -> str:
        return type(self).__name__

    @classmethod
    def checks(cls) -> list[str]:
        names = [name.removeprefix("check_") for name in dir(cls) if name.startswith("check_")]
        return [*cls.order, *sorted(n for n in names if n not in cls.order)]

    async def run(self, name: str) -> None:
        """Run one check: ``AssertionError`` when the implementation breaks its contract."""
        method = getattr(self, f"check_{name}", None)
        if method is None:
            raise ValueError(f"{self.label} has no check {name!r}; checks: {', '.join(self.checks())}")
        try:
            await method()
        except (AssertionError, NotApplicable):
            raise
        except Exception as exc:  # an unexpected exception is the implementation failing the check
            raise AssertionError(f"{name}: raised {type(exc).__name__}: {exc}") from exc

    async def report(self, *names: str) -> Report:
        report = Report(self.label)
        for name in names or tuple(self.checks()):
            try:
                await self.run(name)
            except NotApplicable as exc:
                report.skipped[name] = str(exc)
            except AssertionError as exc:
                report.failed[name] = str(exc)
            else:
                report.passed.append(name)
        return report

    async def verify(self, *names: str) -> Report:
        """Run the checks (all, or those named); raise one ``AssertionError`` naming every failure."""
        report = await self.report(*names)
        report.raise_for_failures()
        return report


async def maybe_await(value: T | Awaitable[T]) -> T:
    """A factory's result, whether it returned a value or an awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


def produced(factory: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """``factory(*args)`` awaited when it returns an awaitable (sync and async factories alike)."""
    return maybe_await(factory(*args))


def parametrize_checks(suite: type[Conformance]) -> pytest.MarkDecorator:
    """``@parametrize_checks(ToolConformance)``: one pytest test per check, as the ``check`` argument::

        @parametrize_checks(ToolConformance)
        async def test_my_tool(check, my_subject):
            await ToolConformance(my_subject).run(check)
    """
    import pytest

    return pytest.mark.parametrize("check", suite.checks())


def expect(condition: object, message: str) -> None:
    """``assert`` that survives ``python -O``: the suites are used outside pytest too."""
    if not condition:
        raise AssertionError(message)
