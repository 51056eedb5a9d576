"""A file attached again is answered from memory only while it is the same, unchanged file; the memory is bounded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medagent.config import Settings
from medagent.tools import builtin
from medagent.tools.builtin import Toolbox


@pytest.fixture
def counted(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[Toolbox, list[str]]:
    toolbox = Toolbox(settings)
    loads: list[str] = []
    real_load = toolbox.loader.load

    def load(path: object, **options: object) -> object:
        loads.append(Path(str(path)).name)
        return real_load(path, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(toolbox.loader, "load", load)
    return toolbox, loads


def test_a_repeated_attach_of_an_unchanged_file_loads_it_once(counted: tuple[Toolbox, list[str]],
                                                                nih_images: list[Path], tmp_path: Path) -> None:
    toolbox, loads = counted
    path = Path(shutil.copy(nih_images[0], tmp_path / "a.png"))
    first = toolbox.attach(path, "DX")
    assert toolbox.attach(path, "DX").id == first.id and loads == ["a.png"]
    assert toolbox.attach(path, "CR").id != first.id and loads == ["a.png", "a.png"]  # another declaration


def test_a_changed_or_replaced_file_is_loaded_again(counted: tuple[Toolbox, list[str]], nih_images: list[Path],
                                                     tmp_path: Path) -> None:
    toolbox, loads = counted
    path = Path(shutil.copy(nih_images[0], tmp_path / "a.png"))
    first = toolbox.attach(path, "DX")
    stat = path.stat()
    # another image under the same name, with the first one's size and times: a new inode tells them apart
    other = Path(shutil.copy(nih_images[1], tmp_path / "b.png"))
    path.unlink()
    other.rename(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = toolbox.attach(path, "DX")
    assert second.id != first.id and loads == ["a.png", "a.png"]
    path.write_bytes(nih_images[0].read_bytes())  # rewritten in place: a new modification time
    assert toolbox.attach(path, "DX").id == first.id and len(loads) == 3


def test_the_memory_keeps_only_the_most_recent_files(counted: tuple[Toolbox, list[str]], nih_images: list[Path],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toolbox, loads = counted
    monkeypatch.setattr(builtin, "MAX_ATTACHED_REMEMBERED", 2)
    paths = [Path(shutil.copy(nih_images[index % 2], tmp_path / f"{index}.png")) for index in range(3)]
    for path in paths:
        toolbox.attach(path, "DX")
    toolbox.attach(paths[2], "DX")
    toolbox.attach(paths[1], "DX")
    assert loads == ["0.png", "1.png", "2.png"]  # the two most recent are remembered
    toolbox.attach(paths[0], "DX")
    assert loads == ["0.png", "1.png", "2.png", "0.png"] and len(toolbox._attached) == 2


def test_remembered_answers_only_for_a_file_attached_before_and_unchanged(counted: tuple[Toolbox, list[str]],
                                                                          nih_images: list[Path],
                                                                          tmp_path: Path) -> None:
    toolbox, loads = counted
    path = Path(shutil.copy(nih_images[0], tmp_path / "a.png"))
    assert toolbox.remembered(path, "DX") is None and toolbox.remembered(tmp_path / "missing.png") is None
    first = toolbox.attach(path, "DX")
    remembered = toolbox.remembered(path, "DX")
    assert remembered is not None and remembered.id == first.id and toolbox.remembered(path, "CR") is None
    path.write_bytes(nih_images[1].read_bytes())
    assert toolbox.remembered(path, "DX") is None and loads == ["a.png"]
    first.path.unlink()  # the stored artifact is gone: nothing to answer with
    path.write_bytes(nih_images[0].read_bytes())
    toolbox.attach(path, "DX")
    assert toolbox.remembered(path, "DX") is not None
