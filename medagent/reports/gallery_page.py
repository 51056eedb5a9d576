"""The gallery's page: fixed CSS and script under a Content-Security-Policy that admits only them, and the text
helpers every value from a run goes through (bounded, paths masked, HTML-escaped).

The script and style are constants, allowed by their hashes; nothing from the data is ever script, markup or an
attribute other than escaped text. The filters read only the cards' ``data-*`` flags, which the writer sets to
``0``/``1``, and show or hide cards with the ``hidden`` property: no ``innerHTML``, nothing fetched.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from typing import Any

FILTERS = {"all": "all cases", "error": "errors", "unparsed": "parse failures", "wrong": "wrong answers",
           "disagree": "arms disagree", "untrained": "untrained experts"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
[hidden]{display:none !important}
.filters{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ccc;z-index:1}
.filters label{margin-right:1em}
.card{background:#fff;border:1px solid #ccc;border-radius:6px;padding:.8em 1em;margin:1em 0}
.card h2{font-size:1.05em;margin:0 0 .4em 0}
.badge{display:inline-block;padding:0 .45em;margin-right:.3em;border-radius:3px;background:#e4e4e4;font-size:.85em}
.badge.bad{background:#f6c9c9}.badge.good{background:#cfeccf}.badge.warn{background:#f7e3b5}
.images{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;font-size:.8em;color:#555}figure img{display:block;max-width:256px;max-height:256px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;margin:.6em 0}dt{font-weight:600}dd{margin:0}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.85em;background:#f4f4f4;padding:.3em}
table{border-collapse:collapse;width:100%;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em;vertical-align:top}
.message{margin:.3em 0}.role{font-weight:600}
"""

SCRIPT = """
(function () {
  var choices = document.querySelectorAll('input[name="filter"]');
  var cards = document.querySelectorAll('article.card');
  var shown = document.getElementById('shown');
  function apply() {
    var wanted = 'all';
    choices.forEach(function (choice) { if (choice.checked) { wanted = choice.value; } });
    var count = 0;
    cards.forEach(function (card) {
      var visible = wanted === 'all' || card.getAttribute('data-' + wanted) === '1';
      card.hidden = !visible;
      if (visible) { count += 1; }
    });
    shown.textContent = String(count);
  }
  choices.forEach(function (choice) { choice.addEventListener('change', apply); });
  apply();
})();
"""


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# images are the gallery's own files beside the page: 'self' where it is served, file: where it is opened from disk
POLICY = (f"default-src 'none'; img-src 'self' file:; style-src {_digest(STYLE)}; script-src {_digest(SCRIPT)}; "
          "base-uri 'none'; form-action 'none'")

# an absolute path (/a/b, ~/a, C:\a\b) inside free text: a file name may be patient data
_PATH = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:[\\/]|~?/)[^\s\"'<>/\\]+(?:[\\/][^\s\"'<>/\\]*)+")
_DROP_KEYS = frozenset({"library_versions", "weights_sha256"})
MAX_DEPTH, MAX_ITEMS, MAX_KEYS, MAX_STRING = 6, 8, 40, 300


def text(value: Any, limit: int) -> str:
    """``value`` as escaped HTML text: paths masked, at most ``limit`` characters (and how many were cut)."""
    raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    raw = _PATH.sub("[path]", raw)
    if len(raw) > limit:
        raw = raw[:limit] + f" … ({len(raw) - limit} more characters)"
    return html.escape(raw, quote=True)


def compact(value: Any, depth: int = 0) -> Any:
    """A short view of a tool's arguments or output: rounded numbers, trimmed lists, dicts and strings."""
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = [(str(key)[:64], item) for key, item in value.items() if key not in _DROP_KEYS and item is not None]
        kept = {key: compact(item, depth + 1) for key, item in items[:MAX_KEYS]}
        return kept | ({"…": f"{len(items) - MAX_KEYS} more entries"} if len(items) > MAX_KEYS else {})
    if isinstance(value, list | tuple):
        trimmed = [compact(item, depth + 1) for item in value[:MAX_ITEMS]]
        return trimmed + ([f"… {len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else [])
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, str) and len(value) > MAX_STRING:
        return value[:MAX_STRING] + "…"
    return value


def page(title: str, summary: str, counts: dict[str, int], cards: list[str]) -> str:
    """The whole page; ``title``, ``summary`` and ``cards`` are HTML already escaped by their writers."""
    choices = "".join(
        f'<label><input type="radio" name="filter" value="{name}"{" checked" if name == "all" else ""}> '
        f'{label}{"" if name == "all" else f" ({counts.get(name, 0)})"}</label>' for name, label in FILTERS.items())
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="referrer" content="no-referrer">', f"<title>{title}</title>", f"<style>{STYLE}</style>",
        "</head><body>", f"<h1>{title}</h1>", f"<p>{summary}</p>",
        f'<div class="filters">{choices} <span>shown: <b id="shown">{len(cards)}</b></span></div>',
        *cards, f"<script>{SCRIPT}</script>", "</body></html>"])
