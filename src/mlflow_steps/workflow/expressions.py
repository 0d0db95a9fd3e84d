"""FuseML ``{{ ... }}`` expressions: parsed once into literal text and typed references."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

NAME = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
CODESET_ATTRIBUTES = ("name", "project")
EXTENSION_ATTRIBUTES = ("url", "version", "zone")
_INPUT = re.compile(rf"inputs\.({NAME})(?:\.({NAME}))?")
_STEP = re.compile(rf"steps\.({NAME})\.outputs\.({NAME})")
_EXTENSION = re.compile(rf"extension\.({NAME})\.(?:({NAME})|cfg\.([A-Za-z0-9_.-]+))")
SYNTAX = ("inputs.NAME[.name|.project], steps.STEP.outputs.OUTPUT or "
          "extension.NAME.url|version|zone|cfg.KEY")


class ExpressionError(ValueError):
    """A template that does not parse; the message says why."""


@dataclass(frozen=True)
class InputRef:
    """``inputs.NAME`` or, for a codeset, ``inputs.NAME.name`` / ``.project``."""

    input: str
    attribute: str = ""


@dataclass(frozen=True)
class StepOutputRef:
    """``steps.STEP.outputs.OUTPUT``."""

    step: str
    output: str


@dataclass(frozen=True)
class ExtensionRef:
    """``extension.SELECTOR.url|version|zone`` or ``extension.SELECTOR.cfg.KEY``."""

    selector: str
    attribute: str
    key: str = ""


Ref = InputRef | StepOutputRef | ExtensionRef
Part = str | Ref


@dataclass(frozen=True)
class Template:
    """A string value: literal parts and references, in order."""

    parts: tuple[Part, ...]

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(part for part in self.parts if not isinstance(part, str))

    @property
    def literal(self) -> str | None:
        """The text when there is no reference in it, else None."""
        return None if self.refs else "".join(str(part) for part in self.parts)

    def render(self, value_of: Callable[[Ref], str]) -> str:
        return "".join(part if isinstance(part, str) else value_of(part) for part in self.parts)


def parse_template(text: str) -> Template:
    """Split ``text`` into literals and references; unterminated or unknown forms fail."""
    parts: list[Part] = []
    position = 0
    while (start := text.find("{{", position)) != -1:
        end = text.find("}}", start + 2)
        if end == -1:
            raise ExpressionError(f"unterminated '{{{{' at column {start + 1}")
        if start > position:
            parts.append(text[position:start])
        parts.append(parse_reference(text[start + 2:end].strip()))
        position = end + 2
    if position < len(text):
        parts.append(text[position:])
    return Template(tuple(parts))


def parse_reference(body: str) -> Ref:
    """One expression body (between the braces) as a reference."""
    if match := _INPUT.fullmatch(body):
        return InputRef(match[1], match[2] or "")
    if match := _STEP.fullmatch(body):
        return StepOutputRef(match[1], match[2])
    if (match := _EXTENSION.fullmatch(body)) and (match[3] or match[2] in EXTENSION_ATTRIBUTES):
        return ExtensionRef(match[1], "cfg" if match[3] else match[2], match[3] or "")
    raise ExpressionError(f"cannot parse '{{{{ {body} }}}}': expected {SYNTAX}")
