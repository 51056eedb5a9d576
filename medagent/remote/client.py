"""A remote expert service's tools, offered to the planner like local ones (family ``remote``)::

    family: remote
    name: cxr_gpu                 # tool names: cxr_gpu_<the service's tool name>
    url: http://10.0.0.7:8765
    tools: [classify_chest_xray]  # default: every tool the service hosts
    timeout_s: 60                 # the whole call, and the tools' policy timeout
    max_concurrency: 16           # calls in flight; concurrent calls travel together (max_batch_size per request)

The service's input and output JSON schemas are the contract. Where the service names a model class of
medagent's own whose schema here is identical, that class is used (its behaviour, e.g. label probabilities for
study columns, comes with it); otherwise the tool's models are thin shells around the schema, validated by
``jsonschema``: translating an arbitrary JSON schema into pydantic types is lossy (patterns, unions, $refs), so
the planner is offered, and the answer checked against, exactly what the service declared.

A service is hostile input like any data: the text of its cards is capped (:data:`MAX_CARD_TEXT` characters per
string, :data:`MAX_CARD_ITEMS` items per list), stripped of control characters, and reaches planners only fenced
as data inside the tool's description, never as instructions.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import re
from typing import Any, ClassVar, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from medagent.agents.prompts import fence_data, one_line
from medagent.cards import ModelCard
from medagent.config import Settings
from medagent.errors import RemoteResponseInvalid
from medagent.families.card import FamilyCardError, RemoteCard
from medagent.remote.batching import RequestBatcher
from medagent.remote.payload import encode
from medagent.remote.protocol import MAX_DESCRIPTION_BYTES, PREFIX, ServiceDescription, ToolDescription
from medagent.remote.relay import bring_artifacts
from medagent.remote.transport import Endpoint
from medagent.runtime.results import Provenance
from medagent.tools.spec import ARTIFACT_ID_MARKER, Tool, ToolContext, ToolPolicy

MAX_CARD_TEXT = 500  # characters of one string of a service's card (summary, each limitation...)
MAX_CARD_ITEMS = 16  # limitations, references, body parts kept from a service's card
_CLASS_PATH = re.compile(r"^(medagent(?:\.[A-Za-z_][A-Za-z0-9_]*)+):([A-Za-z_][A-Za-z0-9_]*)$")


def tools(card: RemoteCard, settings: Settings) -> list[Tool[Any, Any]]:
    """The tools of the service ``card`` names (its description is fetched once, bounded in time and size)."""
    endpoint = Endpoint(str(card.url), timeout_s=card.timeout_s)
    raw = endpoint.get_json(f"{PREFIX}/tools", MAX_DESCRIPTION_BYTES)
    endpoint.check_protocol(raw.get("protocol") if isinstance(raw, dict) else None)  # before its shape is read
    try:
        description = ServiceDescription.model_validate(raw)
    except ValidationError as exc:
        raise RemoteResponseInvalid(f"the service at {endpoint.where} described its tools invalidly "
                                    f"({exc.error_count()} problem(s))") from None
    hosted = {item.name: item for item in description.tools}
    wanted = card.tools if card.tools is not None else list(hosted)
    unknown = [name for name in wanted if name not in hosted]
    if unknown:
        raise FamilyCardError(f"{card.name}: the service at {endpoint.where} hosts no tool {unknown[0]!r}; it hosts "
                              f"{', '.join(hosted) or 'none'}", file=card.name, field="tools")
    batch_size = min(card.max_batch_size or settings.max_batch_size, description.max_items)
    return [_remote_tool(card, hosted[name], endpoint, batch_size, settings.max_batch_wait_ms) for name in wanted]


def _remote_tool(card: RemoteCard, remote: ToolDescription, endpoint: Endpoint, batch_size: int,
                 wait_ms: float) -> Tool[Any, Any]:
    name = f"{card.name}_{remote.name}"
    if len(name) > 64:
        raise FamilyCardError(f"{card.name}: tool name {name[:70]!r}... is over 64 characters; use a shorter card "
                              "name", file=card.name, field="name")
    try:
        model_card = ModelCard.model_validate(remote.card)
        remote_policy = ToolPolicy.model_validate(remote.policy)
    except ValidationError:
        raise RemoteResponseInvalid(f"the service at {endpoint.where} described {remote.name!r} with an invalid "
                                    "card or policy") from None
    # the card file may narrow what the tool is offered for, and say more about it than the service does
    narrowed = {key: getattr(card, key) for key in ("modalities", "body_parts", "summary", "performance")
                if getattr(card, key) is not None}
    narrowed |= {key: getattr(card, key) for key in ("limitations", "references") if getattr(card, key)}
    model_card = _bounded(model_card).model_copy(update=narrowed)
    input_model = _local(remote.input_class, remote.input_schema) or _input_shell(name, remote.input_schema,
                                                                                  endpoint)
    output_model = _local(remote.output_class, remote.output_schema, "serialization") or _output_shell(name, remote.output_schema,
                                                                                     endpoint)
    image_fields = [key for key, prop in remote.input_schema.get("properties", {}).items()
                    if isinstance(prop, dict) and ARTIFACT_ID_MARKER in prop]
    batcher = RequestBatcher(endpoint, remote.name, max_items=batch_size, max_wait_ms=wait_ms)

    async def run(arguments: BaseModel, context: ToolContext) -> BaseModel:
        sent = arguments.model_dump(mode="json", by_alias=True, exclude_unset=True)
        ids = [value for key in image_fields for value in _ids(sent.get(key))]
        records = {image_id: context.load_image(image_id) for image_id in dict.fromkeys(ids)}
        for record in records.values():
            model_card.check_image(record, name)  # before anything travels, as a local expert tool checks
        payloads = await asyncio.to_thread(lambda: {key: encode(record) for key, record in records.items()})
        output, written = await batcher.submit(sent, payloads)
        output = await bring_artifacts(endpoint, written, output, context.artifacts)  # its ids resolve here
        provenance = output.get("provenance")
        if isinstance(provenance, dict):
            provenance["ran_on"] = endpoint.where  # where it ran, as this side reached it (not as the service says)
        try:
            return output_model.model_validate(output)
        except ValidationError as exc:
            raise RemoteResponseInvalid(f"the service at {endpoint.where} answered {remote.name} off its output "
                                        f"schema ({exc.error_count()} problem(s))") from None

    policy = ToolPolicy(timeout_s=card.timeout_s, max_retries=remote_policy.max_retries,
                        max_concurrency=card.max_concurrency, requires_approval=remote_policy.requires_approval)
    return Tool(name=name, card=model_card, input_model=input_model, output_model=output_model, run=run,
                policy=policy, ready=lambda: remote.ready, fenced_description=_description(model_card))


def _text(value: str) -> str:
    return one_line(value, MAX_CARD_TEXT)


def _bounded(card: ModelCard) -> ModelCard:
    """The service's card with every string capped and on one line (it is shown to people and planners)."""
    return card.model_copy(update={
        "summary": _text(card.summary), "performance": _text(card.performance) if card.performance else None,
        "limitations": [_text(item) for item in card.limitations[:MAX_CARD_ITEMS]],
        "references": [_text(item) for item in card.references[:MAX_CARD_ITEMS]],
        "body_parts": [_text(item) for item in card.body_parts[:MAX_CARD_ITEMS]] if card.body_parts else None})


def _description(card: ModelCard) -> str:
    """What planners read: medagent's own words, the modalities (enum values), the card's text fenced as data."""
    accepts = f" Accepts: {', '.join(m.value for m in card.modalities)}." if card.modalities else ""
    said = {"summary": card.summary, "limitations": card.limitations}
    return (f"A tool of a remote expert service.{accepts} What its card says:\n"
            + fence_data("Remote card", said, max_text=MAX_CARD_TEXT))


def _ids(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _local(class_path: str | None, schema: dict[str, Any],
           mode: Literal["validation", "serialization"] = "validation") -> type[BaseModel] | None:
    """medagent's own model class the service names, when its schema here is the service's exactly (only
    medagent's modules are ever imported on the service's word)."""
    match = _CLASS_PATH.match(class_path or "")
    if match is None:
        return None
    try:
        found = getattr(importlib.import_module(match.group(1)), match.group(2), None)
    except ImportError:
        return None
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        return None
    try:
        same = found.model_json_schema(mode=mode) == schema
    except Exception:  # noqa: BLE001 - a class that cannot state its schema here is not the service's: use the schema
        return None
    return found if same else None


def _validator(schema: dict[str, Any], where: str) -> Draft202012Validator:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        raise RemoteResponseInvalid(f"{where}: the service's schema is not a valid JSON schema") from None
    return Draft202012Validator(schema)


def _problem(validator: Draft202012Validator, data: Any) -> str | None:
    error = best_match(validator.iter_errors(data))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "arguments"
    return f"`{where[:64]}`: {error.message[:200]}"


class _SchemaShell(BaseModel):
    """A model whose contract is a JSON schema: ``model_json_schema`` returns it as the service declared it."""

    _schema: ClassVar[dict[str, Any]] = {}
    _validator: ClassVar[Draft202012Validator]

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return copy.deepcopy(cls._schema)

    @model_validator(mode="before")
    @classmethod
    def _matches_schema(cls, data: Any) -> Any:
        problem = _problem(cls._validator, data)
        if problem is not None:
            raise ValueError(problem)
        return data


def _input_shell(name: str, schema: dict[str, Any], endpoint: Endpoint) -> type[BaseModel]:
    """Arguments: one field per top-level property (the registry reads names and image-id fields from them), the
    values checked by the schema."""
    fields: dict[str, Any] = {}
    required = set(schema.get("required", []))
    for key, prop in schema.get("properties", {}).items():
        if not key.isidentifier() or key.startswith("_") or hasattr(BaseModel, key):
            raise RemoteResponseInvalid(f"{name}: argument {key[:64]!r} of the service at {endpoint.where} cannot be "
                                        "a field name here")
        marker = prop.get(ARTIFACT_ID_MARKER) if isinstance(prop, dict) else None
        extra = {ARTIFACT_ID_MARKER: marker} if marker else None
        fields[key] = (Any, Field(... if key in required else None, json_schema_extra=extra))
    model: type[_InputShell] = create_model(f"{name}_input", __base__=_InputShell, **fields)
    model._schema, model._validator = schema, _validator(schema, name)
    return model


class _InputShell(_SchemaShell):
    model_config = ConfigDict(extra="forbid")


class RemoteOutput(_SchemaShell):
    """A remote tool's result: the service's JSON as it came (checked by its schema), provenance typed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    provenance: Provenance | None = None


def _output_shell(name: str, schema: dict[str, Any], endpoint: Endpoint) -> type[BaseModel]:
    model: type[RemoteOutput] = create_model(f"{name}_output", __base__=RemoteOutput)
    model._schema, model._validator = schema, _validator(schema, f"{name} (at {endpoint.where})")
    return model
