"""Terminal-safe output: every printed message passes ``shown`` (or ``report``, line by line).

Values from outside (image labels, lock lines, run tags, registry error bodies, package names,
a step's output) may hold control characters: an escape sequence that clears the screen or
retitles the terminal, a carriage return that overwrites what came before, a newline that
forges a line of our output, a bidi override that reorders what is read. ``escape`` shows each
of them as an escape (``\\x1b``, ``\\n``, ``\\u202e``) instead; ``shown`` also masks
credentials (``redaction.redact``). Our own multi-line reports are lists of lines, each shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlflow_steps.core.redaction import redact

# C0 and C1 controls, DEL, the Unicode line/paragraph separators and the bidi controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                      "\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: object) -> str:
    """``text`` as one line with every control character (newlines too) escaped."""
    return _CONTROL.sub(_escaped, str(text))


def shown(text: object, secrets: Iterable[str] = ()) -> str:
    """``text`` as one printable line: credentials masked, control characters escaped."""
    return escape(redact(text, secrets))


def report(lines: Iterable[object], secrets: Iterable[str] = ()) -> str:
    """Lines of a report, each ``shown``, joined by newlines (only ours)."""
    known = list(secrets)
    return "\n".join(shown(line, known) for line in lines)
