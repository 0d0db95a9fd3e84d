"""Image references: registry/repository:tag (or @digest), Docker Hub names normalised."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow_steps.core.errors import StepError

DOCKER_HUB = "docker.io"
# The OCI distribution reference grammar (distribution/reference): [domain/]path[:tag][@digest]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?"
    rf"(?:@{_DIGEST})?")
NAME_MAX = 255


def check_reference(text: str, *, source: str, field: str) -> str:
    """``text`` when it is a valid image reference, else one line naming the field (a
    newline or a space could otherwise inject Dockerfile instructions)."""
    _matched(text, source=source, field=field)
    return text


def pinned(reference: str, digest: str, *, source: str, field: str) -> str:
    """One pullable reference, name@digest: ``reference``'s name as written (its tag or
    digest dropped: the digest alone says what is pulled) pinned to ``digest``. Both are
    checked first; one line naming ``field`` when either is not valid."""
    name = _matched(reference, source=source, field=field)["name"]
    return f"{name}@{check_digest(digest, source=source, field=field)}"


def _matched(text: str, *, source: str, field: str) -> re.Match[str]:
    match = _REFERENCE.fullmatch(text)
    if match is None or len(match["name"]) > NAME_MAX:
        raise StepError(f"{text!r} is not an image reference ([registry/]name[:tag][@digest])",
                        source=source, field=field)
    return match


def check_digest(text: str, *, source: str, field: str) -> str:
    """``text`` when it is a content digest (algorithm:hex), else one line naming the field."""
    if not re.fullmatch(_DIGEST, text):
        raise StepError(f"{text[:80]!r} is not a digest (algorithm:hex)", source=source,
                        field=field)
    return text


def check_destination(registry: str, repository: str, *, source: str) -> None:
    """One line naming the field when ``registry`` is not a host[:port] or ``repository``
    not a repository path (lowercase components): found before anything is built."""
    if not re.fullmatch(_DOMAIN, registry):
        raise StepError(f"{registry!r} is not a registry host ([host][:port])", source=source,
                        field="registry")
    if not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", repository) or len(
            f"{registry}/{repository}") > NAME_MAX:
        raise StepError(f"{repository!r} is not a repository name (lowercase letters, digits "
                        "and . _ - between them, components split by /)", source=source,
                        field="repository")


@dataclass(frozen=True)
class ImageRef:
    """registry/repository:tag (Docker Hub names normalised)."""

    registry: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        name, _, digest = text.partition("@")
        last = name.rsplit("/", 1)[-1]
        tag = "latest"
        if ":" in last:
            name, tag = name.rsplit(":", 1)
        if digest:
            tag = digest
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, rest
        else:
            registry, repository = DOCKER_HUB, name if rest else f"library/{name}"
        return cls(registry, repository, tag)

    def __str__(self) -> str:
        separator = "@" if self.tag.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{separator}{self.tag}"


def is_insecure(host: str, insecure_registries: tuple[str, ...]) -> bool:
    """Plain HTTP only for registries named insecure, and for loopback ones."""
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host in insecure_registries or bare in ("localhost", "127.0.0.1", "::1")
