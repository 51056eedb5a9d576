"""The per-case gallery beside a run's report: ``gallery.html`` with one card per stored case.

A card shows the images as the planner saw them and the overlays its tools wrote (thumbnails in ``gallery/``,
named by artifact id), the question, options, gold answer, the planner's reply and the answer read from it, the
tool calls with their compacted results, and the conversation (a dialogue's transcript). Filters pick the failed
cases, the parse failures, the wrong answers, the questions on which the arms disagree and the cases whose tool
results came from untrained (random, test-only) weights: those say UNTRAINED on the page, the card and the call.

Everything read from the run is hostile: every value is escaped and bounded (:mod:`.gallery_page`), thumbnails
come only from the de-identified artifact store (never from a dataset file, never named after one), and images
whose DICOM says burned-in annotation are withheld with their overlays.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medagent.errors import MedagentError
from medagent.files import private_dir, write_private
from medagent.imaging.data_url import display_data_url, shows_burned_in_text
from medagent.redaction import redact
from medagent.reports.gallery_page import compact, page, text
from medagent.reports.stored import CaseStore, Outcome, StoredCase, arm_names, graph_type, outcome
from medagent.runtime.untrained import NOTICE, untrained_experts
from medagent.tools.artifacts import ArtifactKind, ArtifactStore
from medagent.tools.invoke import ToolCallRecord

THUMBNAIL_SIDE = 256
MAX_THUMBNAIL_BYTES = 256 * 1024 * 1024  # all thumbnails of one gallery together
MAX_OVERLAY_BYTES = 32 * 1024 * 1024  # an overlay PNG larger than this is not decoded
MAX_IMAGES = 8  # per card, images and overlays each
MAX_CALLS, MAX_MESSAGES = 24, 60
MAX_QUESTION, MAX_OPTION, MAX_OPTIONS, MAX_REPLY, MAX_MESSAGE, MAX_JSON = 4000, 500, 26, 4000, 2000, 3000


class _Thumbnails:
    """Thumbnails written once per artifact into ``folder``; None (with the reason) where none may be shown."""

    def __init__(self, artifacts: ArtifactStore, folder: Path) -> None:
        self.artifacts, self.folder, self.written = artifacts, folder, 0
        self._done: dict[str, tuple[str | None, str]] = {}
        self._burned: dict[str, bool] = {}

    def burned_in(self, image_id: Any) -> bool:
        """Whether the stored image's DICOM said BurnedInAnnotation=YES (read from its record, not its pixels)."""
        if not isinstance(image_id, str):
            return False
        if image_id not in self._burned:
            try:
                deid = self.artifacts.get(image_id).metadata.get("record", {}).get("deid") or {}
                self._burned[image_id] = deid.get("burned_in_annotation") is True
            except (MedagentError, OSError, ValueError, AttributeError):
                self._burned[image_id] = False  # not an image this store holds: nothing of it is shown either
        return self._burned[image_id]

    def src(self, artifact_id: Any, *, withheld: bool = False) -> tuple[str | None, str]:
        if not isinstance(artifact_id, str):
            return None, "not an artifact id"
        if artifact_id not in self._done:
            self._done[artifact_id] = (None, "withheld: burned-in annotation") if withheld else self._make(artifact_id)
        return self._done[artifact_id]

    def _make(self, artifact_id: str) -> tuple[str | None, str]:
        from PIL import Image, UnidentifiedImageError

        if self.written >= MAX_THUMBNAIL_BYTES:
            return None, "not shown: the gallery's size limit is reached"
        try:
            artifact = self.artifacts.get(artifact_id)  # refuses ids that are not the store's own shape
            if artifact.kind is ArtifactKind.IMAGE:
                record = self.artifacts.load_image(artifact_id)
                if shows_burned_in_text(record):
                    return None, "withheld: burned-in annotation"
                png = base64.b64decode(display_data_url(record, THUMBNAIL_SIDE).split(",", 1)[1])
            elif artifact.media_type == "image/png" and artifact.size_bytes <= MAX_OVERLAY_BYTES:
                with Image.open(io.BytesIO(self.artifacts.read_bytes(artifact_id))) as picture:
                    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                    buffer = io.BytesIO()
                    picture.convert("RGB").save(buffer, format="PNG")
                png = buffer.getvalue()
            else:
                return None, "not a picture"
        except (MedagentError, OSError, ValueError, KeyError, TypeError, UnidentifiedImageError,
                Image.DecompressionBombError):
            return None, "not available"
        write_private(self.folder / f"{artifact_id}.png", png)
        self.written += len(png)
        return f"{self.folder.name}/{artifact_id}.png", ""


def _overlay_ids(value: Any, depth: int = 0) -> Iterable[str]:
    """``overlay_id`` values anywhere in a tool's output (bounded walk)."""
    if depth > 6:
        return
    if isinstance(value, dict):
        for key, item in list(value.items())[:200]:
            if key == "overlay_id" and isinstance(item, str):
                yield item
            else:
                yield from _overlay_ids(item, depth + 1)
    elif isinstance(value, list):
        for item in value[:200]:
            yield from _overlay_ids(item, depth + 1)


def _disagreeing(scored: Sequence[tuple[StoredCase, Outcome]]) -> set[str]:
    """Question ids on which two arms, at the same repeat, read different answers (unread answers do not count)."""
    answers: dict[tuple[str, int], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for case, found in scored:
        if found.question_id is not None and found.arm is not None and found.prediction is not None:
            answers[(found.question_id, case.repeat)][found.arm].add(str(found.prediction))
    return {question for (question, _), by_arm in answers.items()
            if len(by_arm) > 1 and len(set().union(*by_arm.values())) > 1}


def _figure(thumbnails: _Thumbnails, artifact_id: Any, caption: str, withheld: bool) -> str:
    src, reason = thumbnails.src(artifact_id, withheld=withheld)
    label = text(artifact_id, 80)
    if src is None:
        return f"<figure><figcaption>{caption} {label}: {text(reason, 80)}</figcaption></figure>"
    return f'<figure><img src="{src}" alt="{caption} {label}"><figcaption>{caption} {label}</figcaption></figure>'


def _images(case: StoredCase, calls: Sequence[ToolCallRecord], thumbnails: _Thumbnails) -> str:
    shown = (case.result or {}).get("images")
    images = [i for i in shown if isinstance(i, str)] if isinstance(shown, list) else \
        list(dict.fromkeys(str(c.arguments["image_id"]) for c in calls if isinstance(c.arguments.get("image_id"), str)))
    burned = any(thumbnails.burned_in(image) for image in images[:MAX_IMAGES])
    overlays = list(dict.fromkeys(o for call in calls if call.ok for o in _overlay_ids(call.output)))
    figures = [_figure(thumbnails, image, "image", False) for image in images[:MAX_IMAGES]]
    figures += [_figure(thumbnails, overlay, "overlay", burned) for overlay in overlays[:MAX_IMAGES]]
    more = max(len(images) - MAX_IMAGES, 0) + max(len(overlays) - MAX_IMAGES, 0)
    return f'<div class="images">{"".join(figures)}{f"<p>{more} more not shown</p>" if more else ""}</div>'


def _choice(value: Any, options: dict[str, Any]) -> str:
    if value is None:
        return "—"
    meaning = options.get(str(value)) if isinstance(value, str) else None
    return text(value, MAX_OPTION) + (f" — {text(meaning, MAX_OPTION)}" if meaning is not None else "")


def _facts(case: StoredCase, found: Outcome) -> str:
    result = case.result or {}
    stored_options = result.get("options")
    options: dict[str, Any] = stored_options if isinstance(stored_options, dict) else {}
    rows = []
    if "question" in result:
        rows.append(("question", text(result.get("question"), MAX_QUESTION)))
    if options:
        items = "".join(f"<li><b>{text(letter, 8)}</b> {text(option, MAX_OPTION)}</li>"
                        for letter, option in list(options.items())[:MAX_OPTIONS])
        rows.append(("options", f"<ul>{items}</ul>"))
    if found.gold is not None or found.prediction is not None:
        rows += [("gold", _choice(found.gold, options)), ("answer", _choice(found.prediction, options))]
    if case.answer is not None:
        rows.append(("reply", f"<pre>{text(case.answer, MAX_REPLY)}</pre>"))
    if result.get("unparsed_reason"):
        rows.append(("not parsed", text(result["unparsed_reason"], 200)))
    if case.error is not None:
        rows.append(("error", f"{text(case.error.code, 80)}: {text(case.error.message, 500)}"))
    return "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows) + "</dl>"


def _json(value: Any) -> str:
    return f"<pre>{text(redact(compact(value)), MAX_JSON)}</pre>"


def _untrained(calls: Iterable[ToolCallRecord]) -> list[str]:
    """The experts whose results in these calls came from random test-only weights (their provenance says so)."""
    return untrained_experts(call.output for call in calls if call.ok)


def _status(call: ToolCallRecord) -> str:
    if not call.ok:
        return text(call.error_code or "failed", 80)
    return 'ok <span class="badge bad">UNTRAINED</span>' if _untrained([call]) else "ok"


def _calls(calls: Sequence[ToolCallRecord]) -> str:
    if not calls:
        return ""
    rows = [f"<tr><td>{text(call.tool, 64)}</td><td>{_status(call)}"
            f"</td><td>{_json(call.arguments)}</td><td>{_json(call.output if call.ok else call.error)}</td></tr>"
            for call in calls[:MAX_CALLS]]
    more = f"<p>{len(calls) - MAX_CALLS} more tool calls not shown</p>" if len(calls) > MAX_CALLS else ""
    return (f"<h3>tool calls ({len(calls)})</h3><table><tr><th>tool</th><th>status</th><th>arguments</th>"
            f"<th>result</th></tr>{''.join(rows)}</table>{more}")


def _message_text(content: Any) -> str:
    if isinstance(content, list):  # a message with image parts: their text, each image as a marker
        return "\n".join(part.get("text", "") if part.get("type") == "text" else "[image]"
                         for part in content[:32] if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _transcript(messages: list[dict[str, Any]], dialogue: bool) -> str:
    if not messages:
        return ""
    shown = [f'<div class="message"><span class="role">{text(m.get("role", "?"), 32)}</span>'
             f'<pre>{text(_message_text(m.get("content")), MAX_MESSAGE)}</pre></div>' for m in messages[:MAX_MESSAGES]]
    if len(messages) > MAX_MESSAGES:
        shown.append(f"<p>{len(messages) - MAX_MESSAGES} more messages not shown</p>")
    label = "transcript" if dialogue else "conversation"
    return f"<details{' open' if dialogue else ''}><summary>{label} ({len(messages)} messages)</summary>" \
        f"{''.join(shown)}</details>"


def _flags(case: StoredCase, found: Outcome, disagreeing: set[str], untrained: bool) -> dict[str, bool]:
    return {"error": case.status == "failed", "unparsed": found.parsed is False, "wrong": found.correct is False,
            "disagree": found.question_id in disagreeing, "untrained": untrained}


def _card(store: CaseStore, run_id: str, case: StoredCase, found: Outcome, flags: dict[str, bool],
          thumbnails: _Thumbnails, dialogue: bool) -> str:
    calls = store.tool_calls(run_id, case.case_id, case.repeat)
    badges = [f'<span class="badge">arm {text(found.arm, 64)}</span>' if found.arm is not None else "",
              f'<span class="badge {"bad" if case.status == "failed" else "good"}">{text(case.status, 16)}</span>',
              '<span class="badge warn">not parsed</span>' if flags["unparsed"] else "",
              f'<span class="badge {"good" if found.correct else "bad"}">{"correct" if found.correct else "wrong"}'
              f"</span>" if found.correct is not None else "",
              '<span class="badge warn">arms disagree</span>' if flags["disagree"] else "",
              f'<span class="badge bad">UNTRAINED test-only weights: {text(", ".join(_untrained(calls)), 200)}</span>'
              if flags["untrained"] else ""]
    attributes = " ".join(f'data-{name}="{int(value)}"' for name, value in flags.items())
    return (f'<article class="card" {attributes}><h2>{text(case.case_id, 200)} · repeat {int(case.repeat)}</h2>'
            f"<div>{''.join(badges)}</div>{_images(case, calls, thumbnails)}{_facts(case, found)}{_calls(calls)}"
            f"{_transcript(store.messages(run_id, case.case_id, case.repeat), dialogue)}</article>")


def write_gallery(store: CaseStore, run_id: str, artifacts: ArtifactStore, folder: Path, *,
                  max_cases: int = 2000) -> Path:
    """Write ``folder/gallery.html`` (and its thumbnails in ``folder/gallery/``), all 0600; returns the page."""
    kind, arms = graph_type(store, run_id), arm_names(store, run_id)
    scored = [(case, outcome(case, kind, arms)) for case in store.cases(run_id)]
    disagreeing = _disagreeing(scored)
    flagged = [(case, found, _flags(case, found, disagreeing,
                                    bool(_untrained(store.tool_calls(run_id, case.case_id, case.repeat)))))
               for case, found in scored]
    counts = {name: sum(flags[name] for _, _, flags in flagged)
              for name in ("error", "unparsed", "wrong", "disagree", "untrained")}
    # a question's arms side by side: the cards sort by question, then repeat, then arm
    flagged.sort(key=lambda item: (item[1].question_id or item[0].case_id, item[0].repeat, item[1].arm or ""))
    thumbnails = _Thumbnails(artifacts, private_dir(folder / "gallery"))
    cards = [_card(store, run_id, case, found, flags, thumbnails, kind == "dialogue")
             for case, found, flags in flagged[:max(max_cases, 0)]]
    left_out = len(flagged) - len(cards)
    summary = f"{len(flagged)} stored cases" + (f"; {left_out} left out (the gallery shows at most {max_cases})"
                                                if left_out else "")
    if counts["untrained"]:
        notice = f'{text(NOTICE, 300)} ({counts["untrained"]} of {len(flagged)} cases)'
        summary = f'<span class="badge bad">{notice}</span> {summary}'
    return write_private(folder / "gallery.html", page(f"Cases of run {text(run_id, 200)}", summary, counts, cards))
