"""Secret values masked in every line we print or record."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "***"


class Redactor:
    """Replaces each known secret value (longest first) with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets) | {value for value in secrets if value}
        self._secrets = sorted(known, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def mapping(self, values: dict[str, str]) -> dict[str, str]:
        return {key: self(value) for key, value in values.items()}
