"""The one YAML reader of medagent: plain data, bounded in size, nodes and depth, without aliases.

Every YAML file medagent reads (studies with their ``kwargs``, case files, label sets, personas) goes
through :func:`compose_yaml` / :func:`load_yaml`. PyYAML expands aliases while constructing, so a
400-byte file of nested ``*refs`` becomes gigabytes ("billion laughs"); aliases are therefore
refused outright, before any expansion, and the node count and nesting depth are capped while the
document is composed. Duplicate keys are refused too (PyYAML silently keeps the last one). Errors
name the file and line, never a value from the file.

    data = load_yaml(Path("labels.yaml"))            # YamlFileError: "labels.yaml:3: aliases (*name) ..."
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medagent.errors import ConfigurationError

MIB = 1024 * 1024


@dataclass(frozen=True)
class YamlLimits:
    """Caps on one document. Defaults suit hand-written studies and case files of a few thousand cases."""

    max_bytes: int = 1 * MIB
    max_nodes: int = 200_000  # scalars, mappings and sequences together
    max_depth: int = 64  # nesting of mappings and sequences; Python's recursion limit is far above


STUDY_LIMITS = YamlLimits()
CASE_FILE_LIMITS = YamlLimits(max_bytes=16 * MIB, max_nodes=1_000_000)  # thousands of cases as YAML/JSON


class YamlFileError(ConfigurationError):
    """A YAML file is unreadable, malformed, too large, or uses aliases. ``file``, ``line`` and ``field`` locate it."""

    code = "yaml_file"

    def __init__(self, message: str, *, file: str, line: int | None = None, field: str | None = None) -> None:
        super().__init__(message, file=file, line=line, field=field)
        self.file, self.line, self.field = file, line, field


class _Refused(Exception):
    def __init__(self, reason: str, mark: yaml.Mark | None, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.line, self.field = reason, (mark.line + 1 if mark is not None else None), field


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, counts nodes, caps depth and refuses duplicate keys."""

    def __init__(self, stream: str, limits: YamlLimits) -> None:
        super().__init__(stream)
        self.limits = limits
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            raise _Refused("aliases (*name) are not allowed; write the value out", self.peek_event().start_mark)
        self._nodes += 1
        if self._nodes > self.limits.max_nodes:
            raise _Refused(f"more than {self.limits.max_nodes} YAML nodes", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > self.limits.max_depth:
                raise _Refused(f"nested deeper than {self.limits.max_depth} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # '<<' merge keys: with aliases refused only inline mappings can be merged
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key (a list or mapping used as a key)
                raise _Refused("a mapping key must be a plain value", key_node.start_mark) from None
            if first is not None:
                raise _Refused(f"duplicate key (first given on line {first})", key_node.start_mark,
                               field=str(key)[:80])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_text(path: Path, limits: YamlLimits = STUDY_LIMITS) -> str:
    """The file's text, refused before reading when it is larger than ``limits.max_bytes``."""
    chunks: list[bytes] = []
    total = 0
    try:
        with path.open("rb") as stream:  # in chunks: read(cap) would allocate the whole cap up front
            while total <= limits.max_bytes and (chunk := stream.read(64 * 1024)):
                chunks.append(chunk)
                total += len(chunk)
    except OSError as exc:
        raise YamlFileError(f"{path.name}: cannot read the file ({exc.strerror})", file=path.name) from None
    raw = b"".join(chunks)
    if len(raw) > limits.max_bytes:
        raise YamlFileError(f"{path.name}: the file is larger than {limits.max_bytes} bytes", file=path.name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlFileError(f"{path.name}: the file is not UTF-8 text", file=path.name) from None


def compose_yaml(text: str, name: str, limits: YamlLimits = STUDY_LIMITS) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for line numbers) and its plain data, both bounded by ``limits``."""
    if len(text) > limits.max_bytes or len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise YamlFileError(f"{name}: the text is larger than {limits.max_bytes} bytes", file=name)
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text, limits)  # the reader refuses control characters already here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as refused:
        where = f"{name}:{refused.line}: " + (f"{refused.field}: " if refused.field else "")
        raise YamlFileError(where + refused.reason, file=name, line=refused.line, field=refused.field) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "invalid YAML"
        raise YamlFileError(f"{name}:{line}: YAML syntax error: {reason}", file=name, line=line) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # reader errors (control characters), bad scalars
        raise YamlFileError(f"{name}: invalid YAML ({type(exc).__name__})", file=name) from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


def load_yaml(path: Path, limits: YamlLimits = STUDY_LIMITS) -> Any:
    """Plain data from a YAML (or JSON) file, under ``limits``."""
    return compose_yaml(read_yaml_text(path, limits), path.name, limits)[1]


def load_yaml_string(text: str, name: str, limits: YamlLimits = STUDY_LIMITS) -> Any:
    return compose_yaml(text, name, limits)[1]


__all__ = ["CASE_FILE_LIMITS", "STUDY_LIMITS", "BoundedLoader", "YamlFileError", "YamlLimits", "compose_yaml",
           "load_yaml", "load_yaml_string", "read_yaml_text"]
