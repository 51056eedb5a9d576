"""Bringing your own tools: an expert as a tool in one call, a decorator for plain async functions, and
the factories that studies (``_target_``) and installed plugins (entry-point group ``medagent.experts``) name.

    @tool(summary="CURB-65 severity score for community-acquired pneumonia")
    async def curb65(arguments: Curb65Input) -> Curb65Score: ...

    agent = Agent(tools=[curb65, expert_tool(MyClassifier(), MyOutput)])

A tool factory is ``factory(settings, **kwargs) -> Tool | Iterable[Tool]``; an entry point may also name a
``Tool`` or a list of them. A plugin that fails to import or build is reported, never raised: the rest work.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict

from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.errors import ConfigurationError, MedagentError
from medagent.runtime.expert import Expert
from medagent.tools.spec import ImageId, Tool, ToolContext, ToolPolicy

ENTRY_POINT_GROUP = "medagent.experts"
MAX_PLUGIN_TOOLS = 256  # tools one plugin may register: far above any real plugin, bounds a hostile one
_MAX_REASON = 300
_TOOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


class ImageInput(BaseModel):
    """The input of a tool that reads one attached image."""

    model_config = ConfigDict(extra="forbid")

    image_id: ImageId


@dataclass(frozen=True)
class UnavailableTool:
    """A tool (or a whole plugin) that cannot be offered here, and what would make it available."""

    name: str
    reason: str
    hint: str | None = None
    source: str = "builtin"  # "builtin", or the plugin's entry-point name

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "reason": self.reason, "hint": self.hint, "source": self.source}


def expert_tool(expert: Expert[Any, Any], output: type[BaseModel] | None = None, *, name: str | None = None,
                policy: ToolPolicy | None = None) -> Tool[ImageInput, Any]:
    """``expert`` as a tool taking ``{"image_id": ...}``. The card's modality check runs before any weights are
    needed, ``ready`` asks the expert without loading anything, and closing the tool closes the expert."""
    tool_name = name or expert.name
    output_model = output or _expert_output(expert)

    async def run(arguments: ImageInput, context: ToolContext) -> Any:
        image = context.load_image(arguments.image_id)
        expert.card.check_image(image, tool_name)
        return await expert(image)

    return Tool(name=_checked_name(tool_name), card=expert.card, input_model=ImageInput, output_model=output_model,
                run=run, policy=policy or ToolPolicy(), ready=expert.ready, close=expert.close)


def _expert_output(expert: Expert[Any, Any]) -> type[BaseModel]:
    """The output model an expert declares as its second type argument (``Expert[ImageRecord, MyOutput]``)."""
    for base in getattr(type(expert), "__orig_bases__", ()):
        arguments = typing.get_args(base)
        if len(arguments) == 2 and inspect.isclass(arguments[1]) and issubclass(arguments[1], BaseModel):
            return arguments[1]
    raise ConfigurationError(f"expert {expert.name!r} declares no output model: pass output= to expert_tool")


def _checked_name(name: str) -> str:
    # what every OpenAI-compatible server accepts as a function name
    if not _TOOL_NAME.fullmatch(name):
        raise ConfigurationError("a tool name is 1-64 letters, digits, '_' or '-', starting with a letter")
    return name


FunctionT = TypeVar("FunctionT", bound=Callable[..., Awaitable[Any]])


def _pydantic_model(hint: Any, function: Callable[..., Any], role: str) -> type[BaseModel]:
    if not (inspect.isclass(hint) and issubclass(hint, BaseModel)):
        raise ConfigurationError(f"@tool {function.__name__!r}: annotate its {role} with a pydantic model")
    return hint


@overload
def tool(function: Callable[..., Awaitable[Any]], /) -> Tool[Any, Any]: ...


@overload
def tool(*, name: str | None = None, card: ModelCard | None = None, summary: str | None = None,
         policy: ToolPolicy | None = None,
         ready: Callable[[], bool] | None = None) -> Callable[[Callable[..., Awaitable[Any]]], Tool[Any, Any]]: ...


def tool(function: Callable[..., Awaitable[Any]] | None = None, /, *, name: str | None = None,
         card: ModelCard | None = None, summary: str | None = None, policy: ToolPolicy | None = None,
         ready: Callable[[], bool] | None = None) -> Any:
    """Turn ``async def f(arguments: InModel[, context: ToolContext]) -> OutModel`` into a :class:`Tool`.

    The input and output models come from the annotations; the card from ``card``, else ``summary``, else the
    docstring's first paragraph. With no ``modalities`` on the card the tool suits any image (or none)."""
    def build(function: Callable[..., Awaitable[Any]]) -> Tool[Any, Any]:
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(f"@tool needs an async function; {function.__name__!r} is not one")
        hints = typing.get_type_hints(function)
        parameters = list(inspect.signature(function).parameters)
        input_model = _pydantic_model(hints.get(parameters[0]) if parameters else None, function, "first argument")
        output_model = _pydantic_model(hints.get("return"), function, "return value")
        if len(parameters) > 2:
            raise ConfigurationError(f"@tool {function.__name__!r}: takes (arguments[, context]) only")
        takes_context = len(parameters) == 2

        async def run(arguments: BaseModel, context: ToolContext) -> Any:
            return await (function(arguments, context) if takes_context else function(arguments))

        description = summary or (inspect.getdoc(function) or "").split("\n\n")[0].strip()
        if card is None and not description:
            raise ConfigurationError(f"@tool {function.__name__!r}: give it a docstring, a summary or a card")
        return Tool(name=_checked_name(name or function.__name__), card=card or ModelCard(summary=description),
                    input_model=input_model, output_model=output_model, run=run, policy=policy or ToolPolicy(),
                    ready=ready or (lambda: True))

    return build(function) if function is not None else build


def tools_from(obj: Any, settings: Settings, **kwargs: Any) -> list[Tool[Any, Any]]:
    """The tools ``obj`` provides: a Tool, an iterable of Tools, or a factory ``(settings, **kwargs)`` of either."""
    if isinstance(obj, Tool):
        found: Any = [obj]
    elif callable(obj) and not isinstance(obj, Iterable):
        found = obj(settings, **kwargs)
        found = [found] if isinstance(found, Tool) else found
    else:
        found = obj
    if isinstance(found, str | bytes) or not isinstance(found, Iterable):
        raise ConfigurationError("a tool factory must return a Tool or a list of Tools")
    tools: list[Tool[Any, Any]] = []
    for item in found:
        if not isinstance(item, Tool):
            raise ConfigurationError(f"a tool factory returned a {type(item).__name__}, not a Tool")
        if len(tools) >= MAX_PLUGIN_TOOLS:
            raise ConfigurationError(f"a tool factory may provide at most {MAX_PLUGIN_TOOLS} tools")
        tools.append(item)
    return tools


def discover_plugins(settings: Settings) -> tuple[list[tuple[str, Tool[Any, Any]]], list[UnavailableTool]]:
    """Tools of the installed ``medagent.experts`` entry points as (plugin name, tool), and the plugins that
    failed to import or build, each with its error. Nothing a plugin raises escapes."""
    found: list[tuple[str, Tool[Any, Any]]] = []
    broken: list[UnavailableTool] = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name):
        try:
            tools = tools_from(point.load(), settings)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is listed with its error, the rest still work
            hint = (f"pip install the package that provides '{exc.name}'"
                    if isinstance(exc, ModuleNotFoundError) and exc.name else _plugin_hint(exc))
            broken.append(UnavailableTool(name=point.name, reason=_reason(exc), hint=hint, source=point.name))
            continue
        found += [(point.name, item) for item in tools]
    return found, broken


def _plugin_hint(exc: BaseException) -> str | None:
    """The hint a plugin's typed error carries (``MissingDependency(..., hint="pip install ...")``), bounded and
    printable like its reason."""
    hint = exc.details.get("hint") if isinstance(exc, MedagentError) else None
    if not isinstance(hint, str) or not hint.strip():
        return None
    return "".join(ch if ch.isprintable() else " " for ch in hint.strip().splitlines()[0])[:_MAX_REASON]


def _reason(exc: BaseException) -> str:
    """A plugin's error for a listing: its type and first line, bounded (a plugin's message is not ours to trust
    for length or control characters)."""
    text = exc.message if isinstance(exc, MedagentError) else str(exc)
    lines = text.splitlines()
    first = "".join(ch if ch.isprintable() else " " for ch in lines[0]) if lines else ""
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON] + "..."
