"""Conformance of experts and tools: provenance, batch isolation, lazy readiness, card vs modality check,
typed errors. Run it on your own expert or tool in your own tests::

    suite = ExpertConformance(MyExpert(), accepted=[dx_record], refused=[ct_record])
    await suite.verify()

    suite = ToolConformance(expert_tool(MyExpert()), context, accepted=[dx_id], refused=[ct_id],
                            experts=[my_expert])
    await suite.verify()

:func:`attach` builds the :class:`ToolContext` (images loaded, de-identified and stored) the tool suite calls with.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from medagent.errors import MedagentError, PreconditionFailed
from medagent.imaging.record import ImageRecord, Modality
from medagent.runtime.expert import Expert
from medagent.runtime.results import Provenance
from medagent.testing.base import Conformance, NotApplicable, expect
from medagent.tools.registry import ToolRegistry
from medagent.tools.spec import Tool, ToolContext

_SHA256 = re.compile(r"[0-9a-f]{64}")


class _BadItem:
    """An input no expert can process: a batch holding it must still answer every other caller."""

    def __repr__(self) -> str:
        return "<not an input>"


BAD_ITEM: Any = _BadItem()


def attach(store_dir: Path, images: Mapping[str, tuple[str | Path, Modality | str | None]], *,
           secret: bytes = b"medagent-conformance-secret-0123456789") -> tuple[ToolContext, dict[str, str]]:
    """Load, de-identify and store ``{key: (path, modality or None)}`` in an artifact store under ``store_dir``, as
    ``Toolbox.attach`` does (an undeclared frontal chest radiograph is detected as DX); returns the context a tool
    is called with and ``{key: image id}``."""
    from medagent.experts.cxr_detect import with_detected_modality
    from medagent.imaging import Deidentifier, ImageLoader
    from medagent.tools.artifacts import ArtifactStore

    loader = ImageLoader(Deidentifier(secret))
    store = ArtifactStore(store_dir)
    ids = {key: store.put_image(with_detected_modality(loader.load(path, modality=modality))).id
           for key, (path, modality) in images.items()}
    return ToolContext(artifacts=store, image_ids=list(ids.values())), ids


def assert_provenance(result: object, where: str, expert: str | None = None) -> Provenance:
    """The contract of every expert result: a ``provenance`` naming the expert, the model and the device; a
    weights hash that is a sha256 or absent; ``untrained`` results never claim a weights hash."""
    raw = getattr(result, "provenance", None)
    expect(raw is not None, f"{where}: the result ({type(result).__name__}) carries no provenance")
    try:
        provenance = raw if isinstance(raw, Provenance) else Provenance.model_validate(
            raw.model_dump() if isinstance(raw, BaseModel) else raw)
    except ValidationError as exc:
        raise AssertionError(f"{where}: the result's provenance is not a Provenance ({exc.error_count()} errors)") \
            from None
    for name in ("expert", "model_id", "device"):
        expect(str(getattr(provenance, name)).strip(), f"{where}: provenance.{name} is empty")
    if expert is not None:
        expect(provenance.expert == expert, f"{where}: provenance names expert {provenance.expert!r}, not {expert!r}")
    sha = provenance.weights_sha256
    expect(sha is None or _SHA256.fullmatch(sha), f"{where}: provenance.weights_sha256 is not a sha256 hex digest")
    expect(not (provenance.untrained and sha), f"{where}: an untrained result claims a weights sha256")
    return provenance


@contextlib.contextmanager
def loading_forbidden(experts: Sequence[Expert[Any, Any]], why: str) -> Iterator[list[str]]:
    """Within the block, each expert's ``load`` records the attempt instead of loading (the list it yields)."""
    attempts: list[str] = []
    for expert in experts:
        def refuse(device: str, _name: str = expert.name) -> Any:
            attempts.append(_name)
            raise AssertionError(f"{_name}: {why} loaded the model")
        expert.load = refuse  # type: ignore[method-assign]  # an instance attribute shadows the method
    try:
        yield attempts
    finally:
        for expert in experts:
            expert.__dict__.pop("load", None)


async def _outcome(awaitable: Any) -> object:
    try:
        return await awaitable
    except Exception as exc:  # noqa: BLE001 - the outcome is what the check judges
        return exc


def _expect_typed(outcome: object, where: str, kind: type[MedagentError] = MedagentError) -> None:
    expect(isinstance(outcome, BaseException), f"{where}: succeeded (returned {type(outcome).__name__}); "
                                                 f"expected a {kind.__name__}")
    expect(isinstance(outcome, kind), f"{where}: raised {type(outcome).__name__} ({outcome}), not a typed "
                                      f"{kind.__name__} from medagent.errors")
    expect(str(outcome).strip(), f"{where}: the {type(outcome).__name__} has no message")


def _card_agrees(card: Any, record: ImageRecord, summary: dict[str, Any], name: str, where: str) -> bool:
    """Whether the card accepts the image; the summary test (what offering uses) and ``check_image`` (what a
    call enforces) must agree."""
    offered = card.accepts_summary(summary)
    try:
        card.check_image(record, name)
        enforced = True
    except PreconditionFailed:
        enforced = False
    expect(offered == enforced, f"{where}: card.accepts_summary says {offered} but card.check_image "
                                f"{'accepts' if enforced else 'refuses'} it")
    return enforced


class ExpertConformance(Conformance):
    """An :class:`~medagent.runtime.expert.Expert`'s contract.

    ``items``: inputs the expert must process (default: the ``accepted`` records); ``accepted``/``refused``:
    images inside and outside its card; ``bad_item``: an input it cannot process (default: not an input at all).
    """

    order = ("ready_loads_nothing",)

    def __init__(self, expert: Expert[Any, Any], *, items: Sequence[Any] | None = None,
                 accepted: Sequence[ImageRecord] = (), refused: Sequence[ImageRecord] = (),
                 bad_item: Any = BAD_ITEM) -> None:
        self.expert = expert
        self.items = list(items) if items is not None else list(accepted)
        self.accepted, self.refused = list(accepted), list(refused)
        self.bad_item = bad_item
        self._bad_at = (len(self.items) + 1) // 2  # between good items when there are two
        self._batched: tuple[list[object], list[int]] | None = None

    @property
    def label(self) -> str:
        return f"ExpertConformance({self.expert.name})"

    async def check_ready_loads_nothing(self) -> None:
        """``ready()`` and ``weights_status()`` answer from files alone: no model is built, nothing is cached."""
        key, cache = self.expert.cache_key, self.expert.cache
        cached = key in cache.keys()  # noqa: SIM118 - a ModelCache, not a dict
        with loading_forbidden([self.expert], "ready()") as attempts:
            ready = self.expert.ready()
            self.expert.weights_status()
        expect(not attempts, f"ready() loaded the model of {', '.join(attempts)}")
        expect(isinstance(ready, bool), f"ready() returned {type(ready).__name__}, not bool")
        expect(cached or key not in cache.keys(), "ready() put a model in the cache")  # noqa: SIM118

    async def _batch(self) -> tuple[list[object], list[int]]:
        """The items and the bad one submitted together, once per suite (models are slow): their outcomes and the
        batch sizes the expert formed for them."""
        if self._batched is None:
            if not self.items:
                raise NotApplicable("no items given")
            before = len(self.expert.batch_sizes)
            submitted = [*self.items[: self._bad_at], self.bad_item, *self.items[self._bad_at:]]
            outcomes = list(await asyncio.gather(*(_outcome(self.expert(item)) for item in submitted)))
            self._batched = outcomes, self.expert.batch_sizes[before:]
        return self._batched

    async def check_provenance(self) -> None:
        """Every result carries provenance naming this expert (see :func:`assert_provenance`)."""
        outcomes, _ = await self._batch()
        for index, outcome in enumerate(outcomes):
            if index != self._bad_at:
                expect(not isinstance(outcome, BaseException), f"item {index} failed: {type(outcome).__name__}: "
                                                               f"{outcome}")
                assert_provenance(outcome, f"item {index}", self.expert.name)

    async def check_bad_item_fails_alone_in_a_batch(self) -> None:
        """Calls submitted together are batched; one bad input fails its own caller with a typed error and
        every other caller gets its result."""
        outcomes, sizes = await self._batch()
        for index, outcome in enumerate(outcomes):
            if index == self._bad_at:
                _expect_typed(outcome, "the bad item in a batch")
            else:
                expect(not isinstance(outcome, BaseException),
                       f"a good item failed because a bad one shared its batch: {type(outcome).__name__}: {outcome}")
        if self.expert.batchable and self.expert.max_batch_size > 1:
            expect(any(size > 1 for size in sizes), f"calls submitted together were not batched (batch sizes {sizes})")

    async def check_typed_errors(self) -> None:
        """An input the expert cannot process raises a typed :class:`MedagentError` with a message."""
        _expect_typed(await _outcome(self.expert(self.bad_item)), "a bad input")

    async def check_card_matches_modality_check(self) -> None:
        """``card.accepts_summary`` (what offering uses) and ``card.check_image`` (what a call enforces) agree on
        every image: they accept the ``accepted`` ones and refuse the ``refused`` ones."""
        if not (self.accepted or self.refused):
            raise NotApplicable("no accepted or refused images given")
        for kind, records in (("accepted", self.accepted), ("refused", self.refused)):
            for index, record in enumerate(records):
                where = f"{kind} image {index} ({record.modality.value}, {record.ndim}D)"
                accepts = _card_agrees(self.expert.card, record, record.summary(), self.expert.name, where)
                verdict = "refuses" if kind == "accepted" else "accepts"
                expect(accepts == (kind == "accepted"), f"{where}: the card {verdict} it")


class ToolConformance(Conformance):
    """A :class:`Tool`'s contract, called the way the agent calls it (through a :class:`ToolRegistry`).

    ``accepted``/``refused``: ids (in ``context``) of images inside and outside the card; ``arguments(id)``: a
    valid argument set on that image; ``calls``: more valid argument sets (e.g. for a tool that takes no image);
    ``bad_calls``: argument sets that must fail with a typed error; ``experts``: the experts behind the tool
    (their loading is watched); ``loaded``: an optional probe, True once the tool holds a model in memory.
    """

    order = ("ready_loads_nothing",)

    def __init__(self, tool: Tool[Any, Any], context: ToolContext, *, accepted: Sequence[str] = (),
                 refused: Sequence[str] = (), arguments: Callable[[str], dict[str, Any]] | None = None,
                 calls: Sequence[dict[str, Any]] = (), bad_calls: Sequence[dict[str, Any]] | None = None,
                 experts: Sequence[Expert[Any, Any]] = (), loaded: Callable[[], bool] | None = None) -> None:
        self.tool, self.context = tool, context
        self.registry = ToolRegistry([tool])  # registering also compiles the input schema planners get
        self.accepted, self.refused = list(accepted), list(refused)
        self.arguments = arguments or (lambda image_id: {"image_id": image_id})
        self.calls = [*(self.arguments(i) for i in self.accepted), *calls]
        first = self.calls[0] if self.calls else {}
        self.bad_calls = list(bad_calls) if bad_calls is not None else [
            {**first, "not_an_argument": 1},
            *([{**first, key: "not-an-attached-image"} for key in ("image_id",) if key in first]),
        ]
        self.experts = list(experts)
        self.loaded = loaded
        self._outcomes: list[object] | None = None

    @property
    def label(self) -> str:
        return f"ToolConformance({self.tool.name})"

    def _call(self, arguments: dict[str, Any]) -> Any:
        return self.registry.call(self.tool.name, arguments, self.context)

    async def check_ready_loads_nothing(self) -> None:
        """``tool.ready()`` answers a bool without loading any model (offering tools calls it on every step)."""
        with loading_forbidden(self.experts, "tool.ready()") as attempts:
            ready = self.tool.ready()
        expect(not attempts, f"tool.ready() loaded the model of {', '.join(attempts)}")
        expect(isinstance(ready, bool), f"tool.ready() returned {type(ready).__name__}, not bool")
        expect(self.loaded is None or not self.loaded(), "tool.ready() left a model in memory")

    async def _together(self) -> list[object]:
        """Every valid call and every failing one (refused images, bad calls) made together, once per suite: their
        outcomes, valid calls first."""
        if self._outcomes is None:
            failing = [*(self.arguments(i) for i in self.refused), *self.bad_calls]
            self._outcomes = list(await asyncio.gather(*(_outcome(self._call(a)) for a in [*self.calls, *failing])))
        return self._outcomes

    async def check_provenance(self) -> None:
        """Every result is the tool's output model and carries provenance."""
        if not self.calls:
            raise NotApplicable("no valid call given")
        for arguments, result in zip(self.calls, await self._together(), strict=False):
            where = f"{self.tool.name}({', '.join(arguments)})"
            expect(not isinstance(result, BaseException), f"{where} failed: {type(result).__name__}: {result}")
            expect(isinstance(result, self.tool.output_model),
                   f"{where}: the result is {type(result).__name__}, not {self.tool.output_model.__name__}")
            assert_provenance(result, where)

    async def check_card_matches_modality_check(self) -> None:
        """On every given image the card's summary test and ``check_image`` agree with ``accepted``/``refused``,
        and a call on a refused image fails with :class:`PreconditionFailed` before any model loads: a tool that
        skips its card's check would run experts on images they were never meant for."""
        if not (self.accepted or self.refused):
            raise NotApplicable("the tool was given no image")
        for kind, ids in (("accepted", self.accepted), ("refused", self.refused)):
            for image_id in ids:
                record = self.context.artifacts.load_image(image_id)
                summary = self.context.artifacts.get(image_id).metadata.get("summary") or record.summary()
                where = f"{kind} image {record.modality.value} {record.source_format} {record.ndim}D"
                accepts = _card_agrees(self.tool.card, record, summary, self.tool.name, where)
                expect(accepts == (kind == "accepted"),
                       f"{where}: the card {'refuses' if kind == 'accepted' else 'accepts'} it")
        for image_id in self.refused:
            with loading_forbidden(self.experts, "a call on a refused image") as attempts:
                outcome = await _outcome(self._call(self.arguments(image_id)))
            expect(not attempts, f"a call on a refused image loaded the model of {', '.join(attempts)}")
            _expect_typed(outcome, "a call on an image outside the card", PreconditionFailed)

    async def check_bad_call_fails_alone(self) -> None:
        """Calls made together: the failing ones (refused images, bad arguments) raise typed errors and every
        valid one still returns its result."""
        if not self.calls or not (self.refused or self.bad_calls):
            raise NotApplicable("needs a valid call and a failing one")
        outcomes = await self._together()
        for arguments, outcome in zip(self.calls, outcomes, strict=False):
            expect(not isinstance(outcome, BaseException), f"a valid call ({', '.join(arguments)}) failed beside "
                                                           f"failing ones: {type(outcome).__name__}: {outcome}")
        for outcome in outcomes[len(self.calls):]:
            _expect_typed(outcome, "a failing call made beside valid ones")

    async def check_typed_errors(self) -> None:
        """Bad arguments (unknown keys, images not attached, and any ``bad_calls`` given) raise typed errors."""
        if not self.bad_calls:
            raise NotApplicable("no bad call given")
        for arguments in self.bad_calls:
            _expect_typed(await _outcome(self._call(arguments)), f"bad arguments {sorted(arguments)}")
