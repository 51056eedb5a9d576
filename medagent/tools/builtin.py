"""The built-in expert tools, and the Toolbox that ties settings, store, loader and registry together."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from stat import S_ISREG
from typing import Any

from pydantic import BaseModel

from medagent.config import Settings
from medagent.errors import FileTooLarge
from medagent.experts.cxr_classifier import Classification
from medagent.experts.cxr_detect import with_detected_modality
from medagent.experts.dicom_header import DicomHeader
from medagent.experts.lungs import LungLocalization
from medagent.experts.quality import QualityReport
from medagent.files import write_private
from medagent.imaging import Deidentifier, ImageLoader, Modality, load_or_create_secret
from medagent.imaging.data_url import display_data_url, shows_burned_in_text
from medagent.imaging.overlay import boxes_overlay_png
from medagent.runtime.expert import Expert
from medagent.tools.artifacts import Artifact, ArtifactKind, ArtifactStore
from medagent.tools.grounding_tools import grounding_tools
from medagent.tools.plugin import ImageInput, UnavailableTool, discover_plugins, expert_tool
from medagent.tools.registry import ToolRegistry, reads_images
from medagent.tools.retrieval_tools import retrieval_tools
from medagent.tools.segmentation_tools import segmentation_tools
from medagent.tools.spec import Tool, ToolContext, ToolPolicy
from medagent.tools.suite import TEXT_EMBEDDER_MODULES, ExpertSuite, installed
from medagent.tools.temporal_tools import compare_studies_tool
from medagent.tools.volume_tools import volume_tools


def _lung_tool(expert: Expert[Any, Any]) -> Tool[ImageInput, LungLocalization]:
    async def run(arguments: ImageInput, context: ToolContext) -> LungLocalization:
        image = context.load_image(arguments.image_id)
        result: LungLocalization = await expert(image)
        boxes = [(f"{lung.side} lung ({lung.method})", (lung.box.x0, lung.box.y0, lung.box.x1, lung.box.y1))
                 for lung in result.lungs]
        overlay = context.artifacts.put_png(
            boxes_overlay_png(image.as_2d(), boxes),
            ArtifactKind.OVERLAY,
            metadata={"source": arguments.image_id, "shows": "lung boxes"},
            provenance=result.provenance.model_dump(),
        )
        return result.model_copy(update={"overlay_id": overlay.id})

    return Tool(name="locate_lungs", card=expert.card, input_model=ImageInput, output_model=LungLocalization,
                run=run, policy=ToolPolicy(timeout_s=30, max_concurrency=2), ready=expert.ready, close=expert.close)


MAX_ATTACHED_REMEMBERED = 4096  # files whose artifact is kept to answer a repeated attach at once
_EXPERTS_EXTRA = "pip install 'medagent[experts]'"
READINESS_TTL_S = 1.0  # how long a tool's readiness check (its files on disk) holds when offering tools

# The packages each built-in tool needs beyond medagent's core; checked without importing them.
BUILTIN_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "classify_chest_xray": ("torch", "torchxrayvision"),
    "segment_chest_anatomy": ("torch", "torchxrayvision"),
    "locate_lungs": ("lungs_finder",),
    "compare_studies": ("skimage",),
    "segment_volume": ("torch", "monai"),
    "search_reports": (*TEXT_EMBEDDER_MODULES, "faiss"),
    "find_similar_images": ("faiss",),
}


def builtin_tools(experts: ExpertSuite) -> list[Tool[Any, Any]]:
    return [
        expert_tool(experts.quality, QualityReport, name="assess_image_quality", policy=ToolPolicy(timeout_s=30)),
        expert_tool(experts.dicom_header, DicomHeader, name="read_dicom_header", policy=ToolPolicy(timeout_s=10)),
        expert_tool(experts.classifier, Classification, name="classify_chest_xray",
                    policy=ToolPolicy(timeout_s=120, max_concurrency=32)),
        _lung_tool(experts.lungs),
        *segmentation_tools(experts.anatomy, experts.lung_fields),
        *grounding_tools(experts.saliency, experts.lung_phrases, experts.learned_grounder),
        compare_studies_tool(experts.differencer, experts.classifier),
        *volume_tools(experts.volume),
        *retrieval_tools(experts.text_retriever, experts.image_retriever),
    ]


def missing_builtins() -> list[UnavailableTool]:
    """Built-in tools whose packages are not installed, each with the install command."""
    unavailable = []
    for name, modules in BUILTIN_REQUIREMENTS.items():
        missing = [module for module in modules if not installed(module)]
        if missing:
            unavailable.append(UnavailableTool(name=name, reason=f"not installed: {', '.join(missing)}",
                                               hint=_EXPERTS_EXTRA))
    return unavailable


def build_registry(experts: ExpertSuite, tools: Iterable[Tool[Any, Any]] = ()) -> ToolRegistry:
    """The built-in tools whose packages are installed, then ``tools`` (a name taken twice is refused)."""
    missing = {item.name for item in missing_builtins()}
    return ToolRegistry([item for item in builtin_tools(experts) if item.name not in missing] + list(tools))


class Toolbox:
    """Everything a session needs to attach images and call expert tools: the built-in tools whose packages are
    installed, the user's ``tools``, and (``plugins``, default ``settings.plugins``) those of installed plugins.
    ``unavailable`` lists what could not be offered and why. Construction loads no model."""

    def __init__(self, settings: Settings | None = None, experts: ExpertSuite | None = None, *,
                 tools: Iterable[Tool[Any, Any]] = (), plugins: bool | None = None) -> None:
        self.settings = settings or Settings()
        self.store = ArtifactStore(self.settings.artifacts_dir)
        self.loader = ImageLoader(
            Deidentifier(load_or_create_secret(self.settings.home, self.settings.deid_secret)),
            limits=self.settings.limits,
            workspace=self.settings.workspace,
        )
        self.experts = experts or ExpertSuite.from_settings(self.settings)
        self.registry = build_registry(self.experts, tools)
        self.unavailable: list[UnavailableTool] = missing_builtins()
        self.plugin_tools: dict[str, str] = {}  # tool name -> the plugin (entry point) or family card providing it
        if self.settings.plugins if plugins is None else plugins:
            self._register_plugins()
        # artifacts are content-addressed, so an id's summary and the tools that suit it never change
        self._summaries: dict[str, dict[str, Any]] = {}
        self._suits: dict[tuple[str, str], bool] = {}
        # the same unchanged file attached again (a study's repeats and arms) is not decoded twice; bounded, as a
        # study of 100k images attaches each once
        self._attached: OrderedDict[tuple[str, int, int, int, int, str | None], Artifact] = OrderedDict()
        self._attach_lock = threading.Lock()
        # a file put in place (weights, an index) is seen within this time, without a look at the disk per step
        self.readiness_ttl_s = READINESS_TTL_S
        self._readiness: dict[str, tuple[Tool[Any, Any], float, bool]] = {}

    def _register_plugins(self) -> None:
        self.register_provided(*discover_plugins(self.settings))

    def register_provided(self, found: list[tuple[str, Tool[Any, Any]]], broken: list[UnavailableTool]) -> None:
        """Tools a source provided, as (source, tool), and the sources that failed: a tool never takes a name
        already registered (it is listed unavailable and closed instead)."""
        self.unavailable += broken
        for source, item in found:
            if item.name in self.registry:  # a built-in or the user's own tool keeps its name
                self.unavailable.append(UnavailableTool(name=item.name, reason="a tool with this name is already "
                                                        "registered", source=source))
                item.close()
                continue
            self.registry.register(item)
            self.plugin_tools[item.name] = source

    def _remembered_key(self, path: str | os.PathLike[str] | Path, modality: Modality | str | None
                        ) -> tuple[str, int, int, int, int, str | None] | None:
        """The file itself (device, inode) unchanged (size, time) under this modality; None for folders (DICOM
        series), missing files and workspace-relative paths, which take the loader's full path."""
        candidate = Path(path)
        if self.settings.workspace is not None and not candidate.is_absolute():
            return None
        try:
            stat = candidate.stat()
        except OSError:
            return None
        if not S_ISREG(stat.st_mode):
            return None
        return (os.path.abspath(candidate), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns,
                str(modality) if modality else None)

    def remembered(self, path: str | os.PathLike[str] | Path, modality: Modality | str | None = None
                   ) -> Artifact | None:
        """The artifact of this very file attached before, unchanged (a study's repeats and arms): no decoding,
        two ``stat`` calls, so an event loop may ask before handing :meth:`attach` to a thread."""
        key = self._remembered_key(path, modality)
        return None if key is None else self._lookup(key)

    def _lookup(self, key: tuple[str, int, int, int, int, str | None]) -> Artifact | None:
        with self._attach_lock:
            cached = self._attached.get(key)
            if cached is not None:
                self._attached.move_to_end(key)
        return cached if cached is not None and cached.path.is_file() else None

    def attach(self, path: str | os.PathLike[str] | Path, modality: Modality | str | None = None) -> Artifact:
        """Load, de-identify and store an image; the returned artifact id is what tools accept."""
        key = self._remembered_key(path, modality)
        cached = None if key is None else self._lookup(key)
        if cached is not None:
            return cached
        # an undeclared PNG/JPEG frontal chest radiograph is marked DX (detected); a declaration wins
        record = with_detected_modality(self.loader.load(path, modality=modality))
        artifact = self.store.put_image(record)
        if key is not None:
            with self._attach_lock:
                self._attached[key] = artifact
                if len(self._attached) > MAX_ATTACHED_REMEMBERED:
                    self._attached.popitem(last=False)
        return artifact

    def attach_bytes(self, data: bytes, modality: Modality | str | None = None) -> Artifact:
        """An image given as bytes (an upload, a PACS instance): the same size limits, content sniffing and
        de-identification as a file. The bytes pass through an owner-only temporary file, removed at once."""
        limit = self.settings.limits.max_file_bytes
        if len(data) > limit:
            raise FileTooLarge(f"the image is {len(data)} bytes; the limit is {limit}", size=len(data), limit=limit)
        # the workspace confines paths a user names; this file is medagent's own, so it is read without it
        loader = ImageLoader(self.loader.deidentifier, self.loader.limits)
        with tempfile.TemporaryDirectory(prefix="medagent-upload-") as folder:  # 0700
            path = write_private(Path(folder) / "upload", data)
            record = with_detected_modality(loader.load(path, modality=modality))
        return self.store.put_image(record)

    def context(self, image_ids: list[str]) -> ToolContext:
        return ToolContext(artifacts=self.store, image_ids=list(image_ids))

    async def call(self, name: str, arguments: str | dict[str, Any], context: ToolContext, *,
                   approved: bool = False) -> BaseModel:
        return await self.registry.call(name, arguments, context, approved=approved)

    def image_summaries(self, image_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Planner-safe summaries (modality, format, shape, ...) of attached images."""
        for image_id in image_ids:
            if image_id not in self._summaries:
                self._summaries[image_id] = self.store.get(image_id).metadata.get("summary", {})
        return {image_id: self._summaries[image_id] for image_id in image_ids}

    def offered_tools(self, summaries: dict[str, dict[str, Any]]) -> list[str]:
        """Tools worth offering a planner: ready to run and suited to at least one attached image."""
        return [tool.name for tool in self.registry.tools() if self._suits_images(tool, summaries) and self._ready(tool)]

    def _ready(self, tool: Tool[Any, Any]) -> bool:
        """``tool.ready()`` as checked at most ``readiness_ttl_s`` ago: it looks for weights and index files on disk
        (several stats), and hundreds of cases in flight ask at every planner step."""
        now = time.monotonic()
        checked = self._readiness.get(tool.name)
        if checked is None or checked[0] is not tool or now - checked[1] >= self.readiness_ttl_s:
            checked = self._readiness[tool.name] = (tool, now, bool(tool.ready()))
        return checked[2]

    def _suits_images(self, tool: Tool[Any, Any], summaries: dict[str, dict[str, Any]]) -> bool:
        if not reads_images(tool.input_model):  # e.g. a score from bedside findings: no image to suit
            return True
        return tool.card.images_per_call <= len(summaries) and any(
            self._suits_image(tool, image_id, summary) for image_id, summary in summaries.items())

    def _suits_image(self, tool: Tool[Any, Any], image_id: str, summary: dict[str, Any]) -> bool:
        key = (tool.name, image_id)
        if key not in self._suits:
            self._suits[key] = tool.card.accepts_summary(summary)
        return self._suits[key]

    def with_image_parts(self, messages: list[dict[str, Any]], image_ids: list[str]) -> list[dict[str, Any]]:
        """For VLM planners: the de-identified display images as data-URL parts of the first user message.
        Images whose DICOM says BurnedInAnnotation=YES are withheld unless ``send_burned_in_images`` is set."""
        shown = [i for i in image_ids if self.settings.send_burned_in_images or not self._burned_in(i)]
        parts = [{"type": "image_url", "image_url": {"url": self.image_data_url(image_id)}} for image_id in shown]
        result, added = [], False
        for message in messages:
            if message["role"] == "user" and not added and parts:
                text = message["content"] if isinstance(message["content"], str) else ""
                message = {**message, "content": [{"type": "text", "text": text}, *parts]}
                added = True
            result.append(message)
        return result

    def _burned_in(self, image_id: str) -> bool:
        return shows_burned_in_text(self.store.load_image(image_id))

    def image_data_url(self, image_id: str, max_side: int = 512) -> str:
        return display_data_url(self.store.load_image(image_id), max_side)

    def close(self) -> None:
        for item in self.registry.tools():
            item.close()
        self.experts.close()
