"""Every tool schema medagent offers a planner (built-in, text index, every family card, the example plugin, a
remote expert service's) compiles on every constrained-decoding backend it supports: checked structurally here,
and against the real llama.cpp server (``llama``) and vLLM server (``vllm``), both as native ``tools`` and as the
structured step's ``response_format``. A server that refuses a schema yields a typed error carrying the server's
own words."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import BaseModel, ConfigDict, Field

from medagent.agents.planner import PlannerConfig
from medagent.agents.prompts import structured_step_schema
from medagent.config import Settings
from medagent.errors import InvalidToolArguments, MedagentError, PlannerRejected
from medagent.tools.schema_compat import UnsupportedToolSchema, planner_schema
from tests.offered_sources import PROVIDED, expert_service, install_plugin, write_cards

STRUCTURE = {"type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
             "anyOf", "description"}
MESSAGES = [{"role": "user", "content": "Call a tool."}]
TEXTS = {"effusion": "Pleural effusion blunts the costophrenic angle on an upright chest radiograph.",
         "pneumothorax": "Pneumothorax shows a visceral pleural line with no lung markings beyond it."}


def _keys(schema: Any, path: str = "") -> set[str]:
    """Every JSON-schema keyword used in ``schema`` (property names excepted)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            if key == "properties":
                for item in value.values():
                    found |= _keys(item)
            elif key != "enum" and key != "const":
                found |= _keys(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= _keys(item)
    return found


class Kind(str, Enum):
    a = "a"
    b = "b"


class Box(BaseModel):
    x0: int = Field(ge=0, le=100_000)
    label: str = Field(pattern=r"^[a-z]+$", max_length=40)


class Everything(BaseModel):
    """One of each construct a tool input model may use."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000, description="words")
    k: int = Field(default=5, ge=1, le=20)
    ratio: float = Field(default=0.5, gt=0, lt=1, multiple_of=0.01)
    kind: Kind = Kind.a
    box: Box | None = None
    boxes: list[Box] = Field(default_factory=list, max_length=500)
    tags: set[str] = Field(default_factory=set)
    pair: tuple[float, float] = (0.0, 1.0)
    when: str = Field(default="2024-01-01", json_schema_extra={"format": "date"})
    extra: dict[str, int] = Field(default_factory=dict)


class Node(BaseModel):
    children: list[Node] = Field(default_factory=list)


def test_every_construct_is_reduced_to_structure_and_the_bounds_move_into_descriptions() -> None:
    schema = planner_schema(Everything.model_json_schema())
    assert _keys(schema) <= STRUCTURE
    assert "2000 characters" in schema["properties"]["query"]["description"]
    assert "<= 20" in schema["properties"]["k"]["description"]
    assert "matching /^[a-z]+$/" in schema["properties"]["box"]["anyOf"][0]["properties"]["label"]["description"]
    assert schema["properties"]["kind"]["enum"] == ["a", "b"]  # the $ref is inlined
    assert planner_schema(schema) == schema  # idempotent
    with pytest.raises(UnsupportedToolSchema):
        planner_schema(Node.model_json_schema())


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def expert_service_url(tmp_path_factory: pytest.TempPathFactory, plugin_site: Path) -> Iterator[str]:
    with expert_service(tmp_path_factory.mktemp("service-home"), plugin_site) as url:
        yield url


@pytest.fixture
def toolbox_with_index(settings: Settings, nih_images: list[Path], pydicom_ct: Path, plugin_site: Path,
                       expert_service_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[str]]]:
    """The toolbox the composition root builds after ``medagent index build`` on a few texts, with every family
    card configured (the remote ones on a real expert service) and the example plugin installed; two chest
    radiographs and a CT attached."""
    from typer.testing import CliRunner

    from medagent.assembly import Assembly
    from medagent.cli.index import index_app

    corpus = settings.home.parent / "texts"
    corpus.mkdir(parents=True)
    for name, text in TEXTS.items():
        (corpus / f"{name}.txt").write_text(text, encoding="utf-8")
    built = CliRunner().invoke(index_app, ["build", str(corpus), "--out", str(settings.text_index), "--json"])
    assert built.exit_code == 0, built.output
    write_cards(settings.experts_dir, expert_service_url)
    monkeypatch.syspath_prepend(str(plugin_site))  # installed: its entry points are found on the path
    toolbox = Assembly(settings).toolbox
    try:
        ids = [toolbox.attach(nih_images[0], "DX").id, toolbox.attach(nih_images[1], "DX").id,
               toolbox.attach(pydicom_ct).id]
        yield toolbox, ids
    finally:
        toolbox.close()


def _entries(toolbox_with_index: tuple[Any, list[str]]) -> list[dict[str, Any]]:
    """Every tool entry the registry can offer, image ids filled in as a session would."""
    toolbox, ids = toolbox_with_index
    entries = toolbox.registry.openai_tools(toolbox.context(ids))
    summaries = toolbox.image_summaries(ids)
    assert "search_reports" in toolbox.offered_tools(summaries)  # the index is there and its tool offered
    assert {e["function"]["name"] for e in entries} == set(toolbox.registry.names())
    return entries


@pytest.mark.torch
@pytest.mark.slow
def test_the_entries_hold_every_card_plugin_and_remote_tool(toolbox_with_index: tuple[Any, list[str]]) -> None:
    """What the compile tests below send: each family card's tools, the plugin's and the remote service's, each
    from the source that provides it, and no configured source failed (a broken one would drop out silently)."""
    toolbox, _ = toolbox_with_index
    names = {entry["function"]["name"] for entry in _entries(toolbox_with_index)}
    for source, provided in PROVIDED.items():
        assert provided <= names, (source, provided - names)
        assert {toolbox.plugin_tools[name] for name in provided} == {source}
    assert set(toolbox.plugin_tools) == set().union(*PROVIDED.values())
    assert [item for item in toolbox.unavailable if item.source != "builtin"] == []
    assert {"search_reports", "classify_chest_xray"} <= names  # the built-in ones are still there


@pytest.mark.torch
@pytest.mark.slow
def test_every_offered_schema_is_plain_structure_and_validation_still_enforces_the_bounds(
        toolbox_with_index: tuple[Any, list[str]]) -> None:
    entries = _entries(toolbox_with_index)
    for entry in entries:
        assert _keys(entry["function"]["parameters"]) <= STRUCTURE, entry["function"]["name"]
    assert _keys(structured_step_schema(entries)) <= STRUCTURE
    toolbox, ids = toolbox_with_index
    context, registry = toolbox.context(ids), toolbox.registry
    for bad in ({"query": "x" * 2001}, {"query": ""}, {"query": "x", "k_max": 21}):
        with pytest.raises(InvalidToolArguments):
            registry.validate("search_reports", bad, context)
    registry.validate("search_reports", {"query": "effusion", "k_max": 3}, context)


# -- the server's own words, whatever way it refuses ----------------------------------------------------

LONG_REASON = "xgrammar: unsupported JSON schema keyword 'dependentSchemas' at /properties/q " + "x" * 3000


class _RefusingHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that refuses every completion: with a 400, or with an error event
    inside a stream it had already begun (as servers that compile grammars lazily do)."""

    mode = "status"

    def log_message(self, *_: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # http.server naming
        self._send(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        error = {"error": {"message": LONG_REASON, "type": "BadRequestError", "code": 400}}
        if self.mode == "status":
            self._send(400, json.dumps(error).encode())
            return
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(error)}\n\n".encode()
        self._send(200, body, "text/event-stream")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["status", "event"])
async def test_a_refusal_reaches_the_caller_typed_with_the_servers_words_bounded(mode: str) -> None:
    from medagent.agents.openai_backend import OpenAICompatiblePlanner

    handler = type("Handler", (_RefusingHandler,), {"mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    planner = OpenAICompatiblePlanner(PlannerConfig(endpoint=f"http://127.0.0.1:{server.server_port}/v1",
                                                    max_retries=0))
    try:
        with pytest.raises(MedagentError) as refused:
            await planner.complete(MESSAGES, response_schema={"type": "object"})
    finally:
        await planner.aclose()
        server.shutdown()
        server.server_close()
    message = refused.value.message
    assert "dependentSchemas" in message and "broke off" not in message and len(message) <= 400, message
    assert isinstance(refused.value, PlannerRejected)  # a 400, in the status or in the event: fix, do not retry


# -- the real servers -----------------------------------------------------------------------------------

def _role_schemas() -> list[dict[str, Any]]:
    """The doctor's step (open and closed label sets, its longest text bound) and the assessor's rubric."""
    from medagent.agents.doctor import MAX_TEXT_CHARS_LIMIT, doctor_schema
    from medagent.dialogue.labels import Label, LabelSet
    from medagent.simulators.assessor import rubric_schema

    closed = LabelSet(name="t", labels=[Label(name="Pneumonia"), Label(name="Pleural effusion")])
    return [doctor_schema(label_set, final=final, max_text_chars=MAX_TEXT_CHARS_LIMIT)
            for label_set in (closed, closed.model_copy(update={"closed": False})) for final in (False, True)
            ] + [rubric_schema()]


# native tools are written into the prompt, and the vLLM test server holds 4096 tokens: every card and plugin
# configured make about 8,600 (SmolLM2's tokenizer, about 3.1 characters a token), so native tools go in groups
PROMPT_BUDGET_CHARS = 6000


def _prompt_groups(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``entries`` in order, in groups whose JSON stays within :data:`PROMPT_BUDGET_CHARS` (a larger entry alone)."""
    groups: list[list[dict[str, Any]]] = [[]]
    size = 0
    for entry in entries:
        length = len(json.dumps(entry))
        if groups[-1] and size + length > PROMPT_BUDGET_CHARS:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += length
    return groups


async def _every_schema_compiles(url: str, config: PlannerConfig, entries: list[dict[str, Any]]) -> None:
    """All entries together as the structured step schema, and as native tools (``auto``, and ``required`` so the
    server must build the grammar of every tool's arguments) in groups that fit the prompt, plus the dialogue
    roles' schemas; every request must complete. A grammar holding several tools compiles only if each tool's does,
    so one request per form and group covers them all (grammar compilation is what a CPU vLLM server spends its
    time on); when one fails, each tool is tried alone so the failure names the tool."""
    from medagent.agents.openai_backend import OpenAICompatiblePlanner

    planner = OpenAICompatiblePlanner(config, endpoint=url)
    model = await planner.served_model()

    async def compiles(client: httpx.AsyncClient, group: list[dict[str, Any]]) -> None:
        turn = await planner.complete(MESSAGES, response_schema=structured_step_schema(group))
        assert turn.finish_reason in ("stop", "length"), [entry["function"]["name"] for entry in group]
        for part in _prompt_groups(group):
            names = [entry["function"]["name"] for entry in part]
            turn = await planner.complete(MESSAGES, tools=part, tool_choice="auto")
            assert turn.finish_reason in ("stop", "length", "tool_calls"), names
            response = await client.post(f"{url}/chat/completions", json={
                "model": model, "messages": MESSAGES, "tools": part, "tool_choice": "required",
                "max_tokens": config.max_tokens, "temperature": 0})
            assert response.status_code == 200 and response.json()["choices"], (names, response.text[:500])

    try:
        for schema in _role_schemas():  # the dialogue roles' constrained replies too
            assert (await planner.complete(MESSAGES, response_schema=schema)).finish_reason in ("stop", "length")
        async with httpx.AsyncClient(timeout=config.read_timeout_s) as client:
            try:
                await compiles(client, entries)
            except (AssertionError, MedagentError):
                for entry in entries:  # name the tool whose schema the server refuses
                    await compiles(client, [entry])
                raise
    finally:
        await planner.aclose()


@pytest_asyncio.fixture
async def llama_server(tmp_path: Path) -> AsyncIterator[Any]:
    from medagent.agents.embedded import EmbeddedLlamaServer

    server = EmbeddedLlamaServer(log_dir=tmp_path / "logs")
    try:
        await server.start()
        yield server
    finally:
        server.stop()


def _embedded_config() -> PlannerConfig:
    from medagent.agents.embedded import embedded_planner_config

    return embedded_planner_config(PlannerConfig(max_tokens=4, temperature=0.0, read_timeout_s=120))


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.asyncio
async def test_every_offered_schema_compiles_on_the_real_llama_cpp_server(
        toolbox_with_index: tuple[Any, list[str]], llama_server: Any) -> None:
    await _every_schema_compiles(llama_server.base_url, _embedded_config(), _entries(toolbox_with_index))


@pytest.mark.llama
@pytest.mark.asyncio
async def test_a_schema_llama_cpp_refuses_fails_typed_with_the_servers_words(llama_server: Any) -> None:
    """The search tool's schema as medagent used to offer it: llama.cpp cannot parse its grammar and drops
    the request (the server dies); the caller gets the server's reason, not 'stream broke off'."""
    from medagent.agents.openai_backend import OpenAICompatiblePlanner
    from medagent.tools.retrieval_tools import SearchReportsInput

    raw = {**SearchReportsInput.model_json_schema(), "additionalProperties": False}
    assert raw["properties"]["query"]["maxLength"] == 2000
    planner = OpenAICompatiblePlanner(_embedded_config(), endpoint=llama_server.base_url,
                                      diagnose=llama_server.failure)
    try:
        with pytest.raises(PlannerRejected) as refused:
            await planner.complete(MESSAGES, response_schema=structured_step_schema_raw(raw))
    finally:
        await planner.aclose()
    message = refused.value.message
    assert "broke off" not in message and len(message) <= 400, message
    assert "grammar" in message.lower(), message


def structured_step_schema_raw(arguments: dict[str, Any]) -> dict[str, Any]:
    """The structured step for one tool, with its arguments' schema exactly as given (not normalised)."""
    return {"type": "object", "required": ["call"], "additionalProperties": False, "properties": {"call": {
        "type": "object", "required": ["name", "arguments"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "enum": ["search_reports"]}, "arguments": arguments}}}}



def _vllm_config() -> PlannerConfig:
    from tests.vllm_server import SERVED_NAME

    return PlannerConfig(model=SERVED_NAME, max_tokens=4, temperature=0.0, read_timeout_s=180)


def _vllm_timeout() -> Any:
    from tests.vllm_server import TEST_TIMEOUT_S

    return pytest.mark.timeout(TEST_TIMEOUT_S)


@pytest.mark.vllm
@pytest.mark.torch
@pytest.mark.slow
@_vllm_timeout()
@pytest.mark.asyncio
async def test_every_offered_schema_compiles_on_the_real_vllm_server(toolbox_with_index: tuple[Any, list[str]],
                                                                     vllm_url: str) -> None:
    await _every_schema_compiles(vllm_url, _vllm_config(), _entries(toolbox_with_index))


@pytest.mark.vllm
@_vllm_timeout()
@pytest.mark.asyncio
async def test_a_schema_vllm_refuses_fails_typed_with_the_servers_words(vllm_url: str) -> None:
    from medagent.agents.openai_backend import OpenAICompatiblePlanner

    planner = OpenAICompatiblePlanner(_vllm_config(), endpoint=vllm_url)
    try:
        with pytest.raises(MedagentError) as refused:  # not a JSON schema at all: every backend refuses it
            await planner.complete(MESSAGES, response_schema={"type": "no-such-type"})
    finally:
        await planner.aclose()
    message = refused.value.message
    assert refused.value.code == "planner_rejected" and len(message) <= 600, message
    assert "no-such-type" in message or "schema" in message.lower(), message


def test_a_small_integer_range_is_offered_as_an_enum_and_a_large_one_as_words() -> None:
    """A small model reads '<= 20' and still writes 50 (the README demo did, once an index was built): a
    small range is an enum every grammar carries; a large one stays words, still enforced on validation."""
    schema = planner_schema({"type": "object", "properties": {
        "k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
        "open": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4},
        "wide": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1}}})
    properties = schema["properties"]
    assert properties["k"]["enum"] == list(range(1, 21)) and "<= 20" in properties["k"]["description"]
    assert properties["open"]["enum"] == [1, 2, 3]
    assert "enum" not in properties["wide"] and "<= 10000" in properties["wide"]["description"]
    assert "enum" not in properties["ratio"]
    assert planner_schema(schema) == schema  # idempotent
