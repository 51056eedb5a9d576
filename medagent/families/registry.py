"""Family cards to tools, on the plugin API: each family module provides ``tools(card, settings) -> list[Tool]``.

``family_tools`` is a tool factory like any plugin's (a study names it with ``_target_``); the toolbox builds the
cards the settings configure (``MEDAGENT_EXPERT_CARDS`` and ``<home>/experts/*.yaml``) the same way, and lists a
card that fails with its error instead of raising.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.families.card import FamilyCard, FamilyCardError, load_card, parse_card
from medagent.tools.plugin import UnavailableTool, _reason, tools_from
from medagent.tools.spec import Tool

# family -> "module:function" building its tools; imported only when a card of that family is built
FAMILY_BUILDERS: dict[str, str] = {
    "zero_shot": "medagent.families.zero_shot:tools",
    "promptable_segmentation": "medagent.families.promptable:tools",
    "detection": "medagent.families.detection:tools",
    "image_text_retrieval": "medagent.families.image_text:tools",
    "specialist_vlm": "medagent.families.specialist:tools",
    "remote": "medagent.remote.client:tools",
}
MAX_CARDS = 64
CARD_SOURCE = "card "  # a card's tools are recorded as provided by "card <file name>"
CARD_SUFFIXES = (".yaml", ".yml", ".json")


def builder(family: str) -> Callable[[Any, Settings], list[Tool[Any, Any]]]:
    module, _, function = FAMILY_BUILDERS[family].partition(":")
    built: Callable[[Any, Settings], list[Tool[Any, Any]]] = getattr(importlib.import_module(module), function)
    return built


def card_from(card: str | Path | dict[str, Any] | FamilyCard) -> FamilyCard:
    if isinstance(card, str | Path):
        return load_card(Path(card))
    if isinstance(card, dict):
        return parse_card(card)
    return card


def build_card(card: FamilyCard, settings: Settings) -> list[Tool[Any, Any]]:
    """The tools of one card. Random test-only weights need the settings' explicit test switch."""
    if card.untrained_test_only and not settings.allow_untrained_test_only:
        raise FamilyCardError(f"{card.name}: untrained_test_only needs MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY=1 (random "
                              "weights are for tests only)", file=card.name, field="untrained_test_only")
    return tools_from(builder(card.family)(card, settings), settings)


def family_tools(settings: Settings, *, card: str | Path | dict[str, Any]) -> list[Tool[Any, Any]]:
    """Tool factory: the tools of a family card (a file, or the card's fields inline)."""
    return build_card(card_from(card), settings)


def configured_cards(settings: Settings) -> list[Path]:
    """The card files the settings name, then those in ``<home>/experts/`` (sorted), at most :data:`MAX_CARDS`."""
    folder = settings.experts_dir
    found = sorted(p for p in folder.iterdir() if p.suffix in CARD_SUFFIXES and p.is_file()) if folder.is_dir() \
        else []
    cards = [Path(p).expanduser() for p in settings.expert_cards] + found
    if len(cards) > MAX_CARDS:
        raise ConfigurationError(f"at most {MAX_CARDS} expert cards may be configured ({len(cards)} found)")
    return cards


def configured_tools(settings: Settings) -> tuple[list[tuple[str, Tool[Any, Any]]], list[UnavailableTool]]:
    """Tools of every configured card as (card file name, tool), and the cards that failed, each with its error."""
    found: list[tuple[str, Tool[Any, Any]]] = []
    broken: list[UnavailableTool] = []
    for path in configured_cards(settings):
        try:
            tools = build_card(load_card(path), settings)
        except Exception as exc:  # noqa: BLE001 - a broken card is listed with its error; the rest still work
            broken.append(UnavailableTool(name=path.stem, reason=_reason(exc), source=CARD_SOURCE + path.name))
            continue
        found += [(CARD_SOURCE + path.name, item) for item in tools]
    return found, broken
