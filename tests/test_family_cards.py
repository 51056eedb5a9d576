"""Family cards: hostile cards get typed, located errors; configured cards reach every way in through the
composition root; a broken card is listed with its error while the rest work."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from medagent.assembly import Assembly
from medagent.config import Settings
from medagent.errors import ConfigurationError
from medagent.families import FamilyCardError, load_card, parse_card
from medagent.families import registry as family_registry
from medagent.families.card import FAMILIES, ZeroShotCard
from medagent.tools.plugin import tool
from medagent.yaml_io import YamlFileError

ZERO_SHOT = {"family": "zero_shot", "name": "medsiglip", "folder": "weights/medsiglip", "architecture": "siglip",
             "labels": ["pneumonia", "no finding"]}


class Echo(BaseModel):
    text: str


def echo_tools(card: Any, settings: Settings) -> list[Any]:
    """A stand-in family builder: the wiring under test is the same for every family."""
    @tool(name=f"{card.name}_echo", summary=f"echo for {card.name}")
    async def echo(arguments: Echo) -> Echo:
        return arguments

    return [echo]


@pytest.fixture
def echo_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(family_registry.FAMILY_BUILDERS, "zero_shot", f"{__name__}:echo_tools")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_card_file_resolves_its_folder_against_its_own_location(tmp_path: Path) -> None:
    card = load_card(_write(tmp_path / "cards" / "medsiglip.yaml",
                            "family: zero_shot\nname: medsiglip\nfolder: weights/medsiglip\narchitecture: siglip\n"
                            "labels: [pneumonia, no finding]\n"))
    assert isinstance(card, ZeroShotCard)
    assert card.folder == (tmp_path / "cards" / "weights" / "medsiglip").resolve()
    described = parse_card({**ZERO_SHOT, "model_id": "google/x", "trained_on": "CXR and CT slices"}).model_card("s")
    assert "Model: google/x" in described.summary and "Trained on: CXR and CT slices" in described.summary


@pytest.mark.parametrize(("change", "field"), [
    ({"family": "../../etc"}, "family"),
    ({"name": "../evil"}, "name"),
    ({"name": "x" * 41}, "name"),
    ({"surprise": 1}, "surprise"),
    ({"labels": []}, "labels"),
    ({"labels": ["x"] * 513}, "labels"),
    ({"linear_head": "../../head.safetensors"}, "linear_head"),
    ({"templates": ["t" * 301]}, "templates.0"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"modalities": ["NOT_A_MODALITY"]}, "modalities.0"),
])
def test_invalid_cards_name_the_field_and_never_quote_the_value(change: dict[str, Any], field: str) -> None:
    with pytest.raises(FamilyCardError) as caught:
        parse_card({**ZERO_SHOT, **change}, source="c.yaml")
    assert caught.value.details["field"] == field
    assert "evil" not in caught.value.message and "etc" not in caught.value.message


def test_hostile_card_files_are_refused_before_parsing(tmp_path: Path) -> None:
    with pytest.raises(YamlFileError, match="alias"):
        load_card(_write(tmp_path / "alias.yaml", "labels: &a [x]\nother: *a\n"))
    with pytest.raises(YamlFileError):
        load_card(_write(tmp_path / "big.yaml", "name: x\n" + "#" * 300_000))


def test_configured_cards_are_offered_everywhere_and_a_broken_one_is_listed(
        tmp_path: Path, echo_family: None) -> None:
    from medagent.cli.experts import rows

    home = tmp_path / "home"
    yaml_card = "family: zero_shot\nname: {name}\nfolder: w\narchitecture: siglip\nlabels: [a]\n"
    _write(home / "experts" / "a.yaml", yaml_card.format(name="in_home"))
    _write(home / "experts" / "broken.yaml", "family: zero_shot\nname: broken\n")
    _write(home / "experts" / "notes.txt", "not a card")
    named = _write(tmp_path / "elsewhere.yaml", yaml_card.format(name="named"))
    settings = Settings(home=home, expert_cards=[named])

    async def listed() -> tuple[list[str], dict[str, str], list[dict[str, Any]]]:
        async with Assembly(settings, plugins=False) as root:
            return root.toolbox.registry.names(), dict(root.toolbox.plugin_tools), rows(root.toolbox)

    names, sources, listing = asyncio.run(listed())
    assert {"in_home_echo", "named_echo"} <= set(names)
    assert sources["named_echo"] == "card elsewhere.yaml" and sources["in_home_echo"] == "card a.yaml"
    by_name = {row["name"]: row for row in listing}
    assert by_name["named_echo"]["source"] == "card" and by_name["named_echo"]["card"] == "elsewhere.yaml"
    broken = by_name["broken"]
    assert broken["available"] is False and broken["card"] == "broken.yaml" and "folder" in broken["reason"]
    # without settings naming cards, and with an empty experts folder, nothing is added
    empty = Settings(home=tmp_path / "other")
    assert family_registry.configured_tools(empty) == ([], [])


def test_untrained_cards_need_the_test_switch(tmp_path: Path, echo_family: None) -> None:
    card = {**ZERO_SHOT, "untrained_test_only": True}
    with pytest.raises(FamilyCardError, match="MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY"):
        family_registry.family_tools(Settings(home=tmp_path), card=card)
    [built] = family_registry.family_tools(Settings(home=tmp_path, allow_untrained_test_only=True), card=card)
    assert built.name == "medsiglip_echo"


def test_the_number_of_cards_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 64"):
        Settings(home=tmp_path, expert_cards=[tmp_path / f"{index}.yaml" for index in range(65)])
    for index in range(3):
        _write(tmp_path / "experts" / f"{index}.yaml", "")
    named = [tmp_path / f"{index}.yaml" for index in range(family_registry.MAX_CARDS - 2)]
    with pytest.raises(ConfigurationError, match="at most"):
        family_registry.configured_cards(Settings(home=tmp_path, expert_cards=named))


def test_the_example_cards_are_valid_and_name_their_public_model() -> None:
    examples = sorted((Path(__file__).resolve().parents[1] / "examples" / "cards").glob("*.yaml"))
    families = {load_card(path).family for path in examples}
    assert families == set(family_registry.FAMILY_BUILDERS) == set(FAMILIES)  # one example per family
    for path in examples:
        card = load_card(path)
        assert card.family in {"remote", "specialist_vlm"} or card.model_id, path.name  # served ones name a model
