"""Image references: registry/repository:tag (or @digest), Docker Hub names normalised."""

from __future__ import annotations

from dataclasses import dataclass

DOCKER_HUB = "docker.io"


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
