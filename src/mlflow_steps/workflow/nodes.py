"""YAML read as PyYAML nodes, so every error names file, line and field path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlflow_steps.core.errors import StepError


@dataclass(frozen=True)
class Where:
    """A place in a YAML file (or a command-line option): file, 1-based line, field path."""

    file: str
    line: int
    path: str

    def error(self, message: str) -> StepError:
        source = f"{self.file}:{self.line}" if self.line else self.file
        return StepError(message, source=source, field=self.path or None)


@dataclass(frozen=True)
class Node:
    """A YAML node with its place; accessors check the shape and fail with the place."""

    node: yaml.Node
    where: Where

    def child(self, node: yaml.Node, path: str) -> Node:
        return Node(node, Where(self.where.file, node.start_mark.line + 1, path))

    def mapping(self, allowed: tuple[str, ...] | None,
                required: tuple[str, ...] = ()) -> dict[str, Node]:
        """Values by key; unknown (unless ``allowed`` is None), repeated or missing keys fail."""
        if not isinstance(self.node, yaml.MappingNode):
            raise self.where.error(f"expected a mapping, got {self._kind()}")
        values: dict[str, Node] = {}
        for key_node, value_node in self.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            path = f"{self.where.path}.{key}" if self.where.path else str(key)
            if key is None:
                raise self.child(key_node, self.where.path).where.error("keys must be plain names")
            if allowed is not None and key not in allowed:
                raise self.child(key_node, path).where.error(
                    f"unknown key {key!r} (allowed: {', '.join(allowed)})")
            if key in values:
                raise self.child(key_node, path).where.error(f"key {key!r} is given twice")
            values[key] = self.child(value_node, path)
        for key in required:
            if key not in values:
                raise self.where.error(f"missing required key {key!r}")
        return values

    def items(self) -> Iterator[Node]:
        """The elements of a sequence (an absent/null value is an empty sequence)."""
        if self.is_null():
            return
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.where.error(f"expected a list, got {self._kind()}")
        for index, item in enumerate(self.node.value):
            yield self.child(item, f"{self.where.path}[{index}]")

    def text(self) -> str:
        """A scalar as written (``5`` → "5", ``true`` → "true"); null is an error."""
        if not isinstance(self.node, yaml.ScalarNode) or self.is_null():
            raise self.where.error(f"expected a string, got {self._kind()}")
        return self.node.value

    def optional_text(self, default: str = "") -> str:
        return default if self.is_null() else self.text()

    def name(self) -> str:
        """A non-empty name."""
        value = self.text().strip()
        if not value:
            raise self.where.error("must not be empty")
        return value

    def is_list(self) -> bool:
        return isinstance(self.node, yaml.SequenceNode)

    def is_null(self) -> bool:
        return (isinstance(self.node, yaml.ScalarNode) and self.node.tag.endswith(":null"))

    def _kind(self) -> str:
        if self.is_null():
            return "nothing"
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        return "a list" if isinstance(self.node, yaml.SequenceNode) else "a scalar"


def parse_documents(text: str, file: str) -> list[Node]:
    """Every YAML document of ``text`` as a Node (JSON is YAML too)."""
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise StepError(f"malformed YAML: {problem}", source=f"{file}:{line}") from None
    return [Node(doc, Where(file, doc.start_mark.line + 1, "")) for doc in documents
            if doc is not None]


def read_text(path: Path) -> str:
    """A YAML file's text, with a one-line error when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StepError("file not found", source=str(path)) from None
    except UnicodeDecodeError:
        raise StepError("not a UTF-8 text file", source=str(path)) from None
    except OSError as exc:
        raise StepError(f"cannot read: {exc.strerror}", source=str(path)) from None
