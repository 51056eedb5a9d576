"""Naming components in YAML by import path: ``{_target_: package.module.Name, kwargs: {...}}``.

Short names have one vocabulary each where the component is defined: planner backends in
:mod:`medagent.agents.planner` (``BACKENDS``), roles beside them (``ROLES``), tools by their registered names.

Import paths are resolved with :mod:`importlib` and ``getattr`` only - never evaluated as code -
and only under allowed prefixes (``medagent.`` by default) unless the caller opts out explicitly.
Private names (a leading underscore) are never traversed, so ``medagent.x.__builtins__`` or a
module re-exported by a medagent module (``medagent.tools.builtin.os``) cannot be reached.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medagent.errors import ConfigurationError

DEFAULT_ALLOWED_PREFIXES: tuple[str, ...] = ("medagent.",)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class TargetRef(BaseModel):
    """A component named by import path, with keyword arguments for its constructor or factory."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    target: str = Field(alias="_target_", description="dotted import path, e.g. medagent.agents.scripted.Planner")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments, plain YAML data only")


def target_problem(target: str, *, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
                   allow_any: bool = False) -> str | None:
    """Why ``target`` may not be used (syntax, private parts, allow-list), or None when it may."""
    if not _DOTTED.match(target):
        return f"'{target}' is not a dotted import path such as medagent.module.Name"
    if any(part.startswith("_") for part in target.split(".")):
        return f"'{target}' names a private attribute (a part starting with '_')"
    if not allow_any and not any(target.startswith(prefix) for prefix in allowed_prefixes):
        return (f"'{target}' is outside the allowed import prefixes ({', '.join(allowed_prefixes)}); "
                "pass allow_any_target=True (CLI: --allow-any-target) to trust this file")
    return None


def _under(module_name: str, prefixes: Sequence[str], allow_any: bool) -> bool:
    return allow_any or any(f"{module_name}.".startswith(prefix) for prefix in prefixes)


def resolve_target(target: str, *, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
                   allow_any: bool = False) -> Any:
    """The class or function ``target`` names. Raises ConfigurationError when it is refused or absent."""
    problem = target_problem(target, allowed_prefixes=allowed_prefixes, allow_any=allow_any)
    if problem:
        raise ConfigurationError(problem, target=target)
    parts = target.split(".")
    module = None
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            module = importlib.import_module(".".join(parts[:split]))
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or not ".".join(parts[:split]).startswith(exc.name):
                raise ConfigurationError(f"importing '{target}' failed: module '{exc.name}' is missing",
                                         target=target) from exc
    if module is None:
        raise ConfigurationError(f"no module of '{target}' can be imported", target=target)
    obj: Any = module
    for name in parts[split:]:
        if not hasattr(obj, name):
            raise ConfigurationError(f"'{target}': '{obj.__name__}' has no attribute '{name}'", target=target)
        obj = getattr(obj, name)
        if inspect.ismodule(obj):  # a module re-exported by an allowed module is still a module elsewhere
            raise ConfigurationError(f"'{target}' passes through a module attribute; name the module directly",
                                     target=target)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        raise ConfigurationError(f"'{target}' is not a class or function", target=target)
    if not _under(obj.__module__, allowed_prefixes, allow_any):
        raise ConfigurationError(f"'{target}' is defined outside the allowed prefixes (re-exported)", target=target)
    return obj


@dataclass(frozen=True)
class TargetPolicy:
    """Which ``_target_`` paths a study may name: those under ``allowed_prefixes``, or any with ``allow_any``.
    A validated study keeps the policy it was loaded under, so a run imports exactly what validation allowed."""

    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED_PREFIXES
    allow_any: bool = False

    def problem(self, target: str) -> str | None:
        return target_problem(target, allowed_prefixes=self.allowed_prefixes, allow_any=self.allow_any)

    def resolve(self, target: str) -> Any:
        return resolve_target(target, allowed_prefixes=self.allowed_prefixes, allow_any=self.allow_any)
