"""The tool registry: planner-facing schemas, argument validation, policy-enforced calls, error taxonomy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ConfigDict, Field

from medagent import errors
from medagent.errors import (
    ApprovalRequired,
    DuplicateTool,
    InvalidToolArguments,
    MedagentError,
    ModelRetry,
    ToolTimeout,
    UnknownTool,
)
from medagent.tools import ArtifactStore, ImageId, ModelCard, Tool, ToolContext, ToolPolicy, ToolRegistry

IMAGE_IDS = ["img-1", "img-2"]


# -- fake tools -------------------------------------------------------------------------


class ImageOnly(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId


class WithThreshold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: ImageId
    threshold: float = Field(default=0.5, ge=0, le=1)


class Score(BaseModel):
    image_id: str
    score: float


async def _score(arguments: Any, context: ToolContext) -> Score:
    return Score(image_id=arguments.image_id, score=getattr(arguments, "threshold", 1.0))


def make_tool(name: str, run: Any = _score, input_model: type[BaseModel] = ImageOnly, **policy: Any) -> Tool[Any, Any]:
    return Tool(
        name=name,
        card=ModelCard(summary=f"{name} for tests"),
        input_model=input_model,
        output_model=Score,
        run=run,
        policy=ToolPolicy(**policy),
    )


@pytest.fixture
def context(tmp_path: Path) -> ToolContext:
    return ToolContext(artifacts=ArtifactStore(tmp_path / "store"), image_ids=list(IMAGE_IDS))


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([make_tool("score"), make_tool("threshold", input_model=WithThreshold)])


# -- registration and lookup ------------------------------------------------------------


def test_duplicate_registration_is_a_configuration_error(registry: ToolRegistry) -> None:
    with pytest.raises(DuplicateTool) as caught:
        registry.register(make_tool("score"))
    assert caught.value.family == "configuration"
    assert registry.names() == ["score", "threshold"]


def test_unknown_tool_lists_the_available_names(registry: ToolRegistry) -> None:
    with pytest.raises(UnknownTool) as caught:
        registry.get("segment")
    assert caught.value.family == "retry"
    assert isinstance(caught.value, ModelRetry)
    assert "segment" in caught.value.message and "score, threshold" in caught.value.message


# -- planner-facing schemas -------------------------------------------------------------


def test_openai_tools_restrict_image_ids_and_hide_internal_keys(registry: ToolRegistry, context: ToolContext) -> None:
    entries = registry.openai_tools(context)
    assert [e["function"]["name"] for e in entries] == ["score", "threshold"]
    for entry in entries:
        assert entry["type"] == "function"
        function = entry["function"]
        assert function["description"].startswith(function["name"])
        parameters = function["parameters"]
        assert parameters["type"] == "object"
        assert parameters["additionalProperties"] is False
        image_id = parameters["properties"]["image_id"]
        assert image_id["enum"] == IMAGE_IDS
        assert not [key for key in image_id if key.startswith("x-medagent")]
    # Restricting one context's ids must not leak into the tool's own model schema.
    assert "enum" not in ImageOnly.model_json_schema()["properties"]["image_id"]


def test_strict_only_when_every_field_is_required(registry: ToolRegistry, context: ToolContext) -> None:
    strict = {e["function"]["name"]: e["function"]["strict"] for e in registry.openai_tools(context)}
    assert strict == {"score": True, "threshold": False}


# -- argument validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"image_id": ', "JSON"),
        ("[1, 2]", "JSON object"),
        ({}, "`image_id` is required"),
        ({"image_id": "img-1", "colour": "red"}, "`colour` is not an argument"),
        ({"image_id": "img-1", "threshold": 1.5}, "`threshold`"),
        ({"image_id": "img-1", "threshold": "high"}, "`threshold`"),
    ],
)
def test_invalid_arguments_ask_the_planner_to_retry(
    registry: ToolRegistry, context: ToolContext, arguments: Any, expected: str
) -> None:
    with pytest.raises(InvalidToolArguments) as caught:
        registry.validate("threshold", arguments, context)
    assert isinstance(caught.value, ModelRetry)
    assert caught.value.family == "retry"
    assert expected in caught.value.message


def test_unknown_image_id_names_the_allowed_ids(registry: ToolRegistry, context: ToolContext) -> None:
    with pytest.raises(InvalidToolArguments) as caught:
        registry.validate("score", {"image_id": "img-3"}, context)
    assert caught.value.message == "`image_id` must be one of: img-1, img-2"
    assert caught.value.family == "retry"


def test_valid_arguments_parse_from_json_or_dict(registry: ToolRegistry, context: ToolContext) -> None:
    from_json = registry.validate("threshold", '{"image_id": "img-2", "threshold": 0.25}', context)
    from_dict = registry.validate("threshold", {"image_id": "img-2", "threshold": 0.25}, context)
    assert from_json == from_dict == WithThreshold(image_id="img-2", threshold=0.25)


# -- calls: approval, timeout, concurrency, output ----------------------------------------


@pytest.mark.asyncio
async def test_approval_is_required_before_running(context: ToolContext) -> None:
    ran: list[str] = []

    async def run(arguments: ImageOnly, context: ToolContext) -> Score:
        ran.append(arguments.image_id)
        return Score(image_id=arguments.image_id, score=1.0)

    registry = ToolRegistry([make_tool("delete", run=run, requires_approval=True)])
    with pytest.raises(ApprovalRequired) as caught:
        await registry.call("delete", {"image_id": "img-1"}, context)
    assert caught.value.family == "configuration"
    assert ran == []
    result = await registry.call("delete", {"image_id": "img-1"}, context, approved=True)
    assert result == Score(image_id="img-1", score=1.0) and ran == ["img-1"]


@pytest.mark.asyncio
async def test_slow_tool_times_out_quickly(context: ToolContext) -> None:
    async def run(arguments: ImageOnly, context: ToolContext) -> Score:
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    registry = ToolRegistry([make_tool("slow", run=run, timeout_s=0.2)])
    started = time.perf_counter()
    with pytest.raises(ToolTimeout) as caught:
        await registry.call("slow", {"image_id": "img-1"}, context)
    assert time.perf_counter() - started < 1.0
    assert caught.value.family == "infrastructure"
    assert caught.value.details["tool"] == "slow"


@pytest.mark.asyncio
async def test_concurrency_limit_is_enforced(context: ToolContext) -> None:
    running = peak = 0

    async def run(arguments: ImageOnly, context: ToolContext) -> Score:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return Score(image_id=arguments.image_id, score=0.0)

    registry = ToolRegistry([make_tool("limited", run=run, max_concurrency=2)])
    calls = [registry.call("limited", {"image_id": IMAGE_IDS[i % 2]}, context) for i in range(10)]
    results = await asyncio.gather(*calls)
    assert len(results) == 10 and all(isinstance(r, Score) for r in results)
    assert peak == 2 and running == 0
    # a study may set its own limit for its hardware, up or down
    for limit in (5, 1):
        registry.set_concurrency("limited", limit)
        peak = 0
        await asyncio.gather(*(registry.call("limited", {"image_id": IMAGE_IDS[0]}, context) for _ in range(10)))
        assert peak == limit == registry.concurrency("limited")
    with pytest.raises(ValueError, match="at least 1"):
        registry.set_concurrency("limited", 0)
    with pytest.raises(UnknownTool):
        registry.set_concurrency("missing", 2)


@pytest.mark.asyncio
async def test_dict_output_is_validated_into_the_output_model(context: ToolContext) -> None:
    async def run(arguments: ImageOnly, context: ToolContext) -> Any:
        return {"image_id": arguments.image_id, "score": "0.75"}

    registry = ToolRegistry([make_tool("loose", run=run)])
    result = await registry.call("loose", '{"image_id": "img-2"}', context)
    assert isinstance(result, Score)
    assert result == Score(image_id="img-2", score=0.75)


# -- the error taxonomy -------------------------------------------------------------------

ERROR_CLASSES = [
    value
    for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, MedagentError) and value is not MedagentError
]
FAMILIES = set(get_args(errors.ErrorFamily))


def test_every_error_has_a_unique_code_and_a_known_family() -> None:
    codes = [cls.code for cls in ERROR_CLASSES]
    assert len(ERROR_CLASSES) > 20
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert FAMILIES == {"retry", "tool_failure", "configuration", "infrastructure"}
    family_bases = [errors.ModelRetry, errors.ToolFailure, errors.ConfigurationError, errors.InfrastructureError]
    for cls in ERROR_CLASSES:
        assert cls.family in FAMILIES, cls
        # Exactly one family base, and the declared family is that base's.
        (base,) = [b for b in family_bases if issubclass(cls, b)]
        assert cls.family == base.family, cls


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_to_dict_carries_family_code_message_and_details(cls: type[MedagentError]) -> None:
    error = cls("something went wrong", tool="score")
    assert error.to_dict() == {"family": cls.family, "code": cls.code, "message": "something went wrong", "tool": "score"}
    assert str(error) == "something went wrong"


class Permissive(BaseModel):
    """An input model that would silently drop unknown keys on its own."""

    image_id: ImageId


def test_extra_arguments_are_refused_even_when_the_model_ignores_them(context: ToolContext) -> None:
    registry = ToolRegistry([make_tool("permissive", input_model=Permissive)])
    with pytest.raises(InvalidToolArguments, match="`colour` is not an argument"):
        registry.validate("permissive", {"image_id": "img-1", "colour": "red"}, context)
