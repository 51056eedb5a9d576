"""YAML with locations: every key and list item remembers its line, so errors can say file:line: field.

Parsing is :mod:`medagent.yaml_io`'s: bounded size, node count and depth, no aliases, no duplicate
keys. Pydantic error locations (``loc`` tuples) are mapped back to lines by walking
the loaded data and skipping the tags pydantic inserts for union members.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medagent.errors import ConfigurationError
from medagent.yaml_io import STUDY_LIMITS, YamlFileError, YamlLimits, compose_yaml, read_yaml_text

Loc = tuple[str | int, ...]
_MAX_PROBLEMS_SHOWN = 5


class StudyConfigError(ConfigurationError):
    """A study/workflow file (or a dataset it names) is invalid. ``file``, ``line`` and ``field`` locate it."""

    code = "study_config"

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, problems: list[str] | None = None) -> None:
        super().__init__(message, file=file, line=line, field=field)
        self.file = file
        self.line = line
        self.field = field
        self.problems = problems or [message]


@dataclass(frozen=True)
class Problem:
    """One thing wrong at ``loc`` (a path into the loaded data), in plain words."""

    loc: Loc
    message: str
    priority: int = 1  # among problems on one line, lower is shown first (an unknown key explains a missing one)


def format_field(loc: Sequence[str | int]) -> str:
    """``('graph', 'steps', 2, 'tool')`` -> ``graph.steps[2].tool``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _collect_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*loc, key_node.value)
                lines[child] = key_node.start_mark.line + 1
                _collect_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*loc, index)
            lines[child] = item.start_mark.line + 1
            _collect_lines(item, child, lines)


@dataclass
class LocatedDocument:
    """A parsed YAML document plus the line of every key and list item."""

    file: Path
    data: Any
    lines: dict[Loc, int]

    @classmethod
    def read(cls, path: Path, limits: YamlLimits = STUDY_LIMITS) -> LocatedDocument:
        try:
            text = read_yaml_text(path, limits)
        except YamlFileError as exc:
            raise StudyConfigError(exc.message, file=path.name) from None
        return cls.parse(text, path, limits)

    @classmethod
    def parse(cls, text: str, path: Path, limits: YamlLimits = STUDY_LIMITS) -> LocatedDocument:
        """Bounded, alias-free parsing (:mod:`medagent.yaml_io`); errors located at file:line."""
        try:
            node, data = compose_yaml(text, path.name, limits)
        except YamlFileError as exc:
            raise StudyConfigError(exc.message, file=path.name, line=exc.line, field=exc.field) from None
        lines: dict[Loc, int] = {(): 1}
        if node is not None:
            _collect_lines(node, (), lines)
        return cls(file=path, data=data, lines=lines)

    def locate(self, loc: Sequence[str | int]) -> tuple[Loc, int]:
        """The data path ``loc`` names (pydantic's union tags dropped) and the line of its deepest existing part.

        A trailing part that does not exist (a missing field) is kept in the path so the field is named.
        """
        current: Any = self.data
        matched: Loc = ()
        parts = list(loc)
        for position, part in enumerate(parts):
            exists = (isinstance(current, dict) and part in current) or (
                isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current))
            if exists:
                current, matched = current[part], (*matched, part)
            elif position == len(parts) - 1 and isinstance(current, dict) and isinstance(part, str):
                return (*matched, part), self.lines.get(matched, 1)
            # otherwise a union tag ('str', 'TargetRef', 'pipeline'): skip it
        return matched, self.lines.get(matched, 1)

    def error(self, problems: list[Problem]) -> StudyConfigError:
        """One error naming the first problem's file:line: field, listing up to five problems."""
        rendered: list[tuple[int, int, str, str]] = []
        for problem in problems:
            path, line = self.locate(problem.loc)
            field = format_field(path) or "(top level)"
            rendered.append((line, problem.priority, field, f"{self.file.name}:{line}: {field}: {problem.message}"))
        rendered.sort(key=lambda item: (item[0], item[1]))
        first_line, _, first_field, _ = rendered[0]
        texts = [text for *_, text in rendered]
        message = "\n".join(texts[:_MAX_PROBLEMS_SHOWN])
        if len(texts) > _MAX_PROBLEMS_SHOWN:
            message += f"\n... and {len(texts) - _MAX_PROBLEMS_SHOWN} more"
        return StudyConfigError(message, file=self.file.name, line=first_line, field=first_field, problems=texts)


def problems_from_validation(error: ValidationError,
                             allowed_keys: Callable[[Loc], list[str] | None] | None = None) -> list[Problem]:
    """Pydantic's errors in plain words. ``allowed_keys(parent_loc)`` adds 'did you mean' to unknown keys."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        kind = item["type"]
        priority = 1
        if kind == "missing":
            message = "required field is missing"
        elif kind == "extra_forbidden":
            message, priority = f"unknown key '{loc[-1]}'", 0
            allowed = allowed_keys(loc[:-1]) if allowed_keys else None
            close = difflib.get_close_matches(str(loc[-1]), allowed or [], n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            elif allowed:
                message += f" (allowed: {', '.join(allowed)})"
        elif kind == "union_tag_invalid":
            message = item["msg"].replace("Input tag", "type")
            discriminator = item.get("ctx", {}).get("discriminator", "").strip("'")
            loc = (*loc, discriminator) if discriminator else loc
        else:
            message = item["msg"]
            if message.startswith("Value error, "):
                message = message.removeprefix("Value error, ")
        problems.append(Problem(loc, message, priority))
    return problems
