"""The one YAML loader: bounded read, nesting bounded, duplicate keys refused, one-line errors
with file, line and column that never quote the document's own text (a secret YAML reads as
an alias ``*abc`` or a tag ``!xyz`` must not end up in a message).

Codeset files are loaded as data (``load_yaml_mapping``); workflow and extension files are
composed into nodes (``compose_documents``) so their errors can name the line of any field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mlflow_steps.core.bounded import (
    MAX_FILE_BYTES,
    quoted,
    read_bounded_text,
    read_env_text,
    relative_name,
)
from mlflow_steps.core.errors import StepError

MAX_DEPTH = 64  # collections inside collections; real files stay under 10
_TOO_DEEP = f" (over {MAX_DEPTH} levels of lists and mappings)"
_BAD_VALUE = ": a value does not fit its type (an impossible date, or a !!tag it does not match)"
_VALUE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError)
# Parser token kinds ('<block end>', '?', ...): never text of the document.
_TOKEN_ID = re.compile(r"'(?:<[a-z ]+>|[\]\[{}?:,-])'")
_QUOTED = re.compile(r"""\s*(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


class _Problem(Exception):
    """A problem found while loading, with its place (raised inside PyYAML's recursion)."""

    def __init__(self, what: str, mark: yaml.Mark | None, detail: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.mark = mark
        self.detail = detail


class WrittenFloat(float):
    """A float YAML read from text it does not round-trip to (``3.10`` → 3.1)."""

    text: str


class WrittenInt(int):
    """An int YAML read from text it does not round-trip to (``3:10`` → 190, ``0o10`` → 8)."""

    text: str


def written_text(value: Any) -> str | None:
    """The text a number was written as, when YAML read it as a different-looking number."""
    return getattr(value, "text", None) if isinstance(value, WrittenFloat | WrittenInt) else None


class _Loader(yaml.SafeLoader):
    """SafeLoader with bounded nesting, no recursive aliases and no duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open_anchors:
                raise _Problem("recursive alias", event.start_mark,
                               ": an alias refers to a collection that contains it")
            return super().compose_node(parent, index)
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Problem("nesting too deep", event.start_mark, _TOO_DEEP)
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in self.yaml_constructors:
            raise _Problem("malformed YAML", event.start_mark,
                           ": unknown tag (only YAML's own !!str, !!int, ... are read)")
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _VALUE_ERRORS:  # `2001-13-45`, `!!int abc`, `!!bool x`: PyYAML's own crashes
            raise _Problem("malformed YAML", node.start_mark, _BAD_VALUE) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise _Problem(f"key {quoted(key_node.value, 60)} is given twice",
                                   key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _construct_number(kind: type) -> Any:
    base = {WrittenFloat: yaml.SafeLoader.construct_yaml_float,
            WrittenInt: yaml.SafeLoader.construct_yaml_int}[kind]

    def construct(loader: _Loader, node: yaml.ScalarNode) -> Any:
        value = base(loader, node)
        text = node.value.strip()
        if isinstance(value, float | int) and text != repr(value):
            written = kind(value)
            written.text = text
            return written
        return value

    return construct


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_number(WrittenFloat))
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_number(WrittenInt))


def _kind(text: str | None) -> str:
    """PyYAML's wording of a problem without anything quoted from the document."""
    if not text:
        return ""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0).strip()
        if _TOKEN_ID.fullmatch(token):
            return " " + token
        return " (a tab)" if token == r"'\t'" else ""

    return " ".join(_QUOTED.sub(replace, text).split()).removesuffix(";")


def _line_col(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _error(exc: Exception, text: str, source: str) -> StepError:
    """One line: file:line, column and the kind of problem."""
    if isinstance(exc, _Problem):
        line, column = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (1, 1)
        return StepError(f"{exc.what} at column {column}{exc.detail}", source=f"{source}:{line}")
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _line_col(text, exc.position)
        return StepError(f"malformed YAML at column {column}: unacceptable control character",
                         source=f"{source}:{line}")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = _kind(getattr(exc, "problem", None)) or "invalid syntax"
    context = _kind(getattr(exc, "context", None))
    if context.startswith("found duplicate anchor"):
        problem, context = "found a duplicate anchor", ""
    if context.startswith("while "):
        problem = f"{problem} {context}"
    elif context:
        problem = f"{context}, {problem}"
    problem = problem.replace("found character (a tab) that cannot start any token",
                              "found a tab that cannot start any token (indent with spaces)")
    return StepError(f"malformed YAML at column {column}: {problem}", source=f"{source}:{line}")


def _run(text: str, source: str, method: Any) -> Any:
    loader = None
    try:
        loader = _Loader(text)  # the reader checks for control characters here
        return method(loader)
    except (yaml.YAMLError, _Problem) as exc:
        raise _error(exc, text, source) from None
    except _VALUE_ERRORS:  # raised where no node is at hand (a collection being filled)
        raise StepError(f"malformed YAML{_BAD_VALUE}", source=source) from None
    except RecursionError:  # belt and braces: MAX_DEPTH keeps PyYAML far from the limit
        raise StepError(f"nesting too deep{_TOO_DEEP}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _compose_all(loader: _Loader) -> list[yaml.Node]:
    documents = []
    while loader.check_node():
        documents.append(loader.get_node())
    return documents


def load_yaml_text(text: str, source: str) -> Any:
    """The single YAML document of ``text`` as data (``source`` names it in errors)."""
    return _run(text, source, _Loader.get_single_data)


def compose_documents(text: str, source: str) -> list[yaml.Node]:
    """Every YAML document of ``text`` as a node graph."""
    return [doc for doc in _run(text, source, _compose_all) if doc is not None]


def read_yaml_documents(path: Path, *, what: str) -> list[yaml.Node]:
    """Read a workflow or extension file (bounded, regular files only) and compose it."""
    source = str(path)
    text = read_bounded_text(path, source=source, limit=MAX_FILE_BYTES, what=what)
    return compose_documents(text, source)


def load_yaml_mapping(codeset: Path, path: Path) -> dict[str, Any]:
    """Parse ``path`` as YAML and require a mapping at the top level."""
    name = relative_name(codeset, path)
    data = load_yaml_text(read_env_text(codeset, path), name)
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise StepError(f"expected a YAML mapping at the top level, got {kind}", source=name)
    return data


def describe(value: Any) -> str:
    """What YAML made of a value, for messages (never the value itself)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def require_str_list(value: Any, *, source: str, field: str) -> list[str]:
    """Validate a YAML list of strings."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StepError("expected a list of strings", source=source, field=field)
    return value
