"""Text from data and models made safe to print: no terminal control sequences, no console markup.

A planner (or a DICOM value, a case file, a study name) may carry ESC sequences that recolour, retitle
or rewrite the user's terminal, or square brackets that rich would read as markup (and crash on, for
``[/]``). Everything such text passes through :func:`safe` before ``console.print``.
"""

from __future__ import annotations

import re

from rich.markup import escape

# ESC sequences (CSI ... final byte, OSC ... BEL/ST, two-byte escapes), then any other C0/C1 control but
# newline and tab, DEL, and the bidirectional overrides that reorder what the eye reads
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: object) -> str:
    """``text`` without terminal control sequences or control characters (newline and tab kept)."""
    return _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", str(text)))


def safe(text: object) -> str:
    """:func:`strip_controls`, then escaped so rich prints it literally."""
    return escape(strip_controls(text))
