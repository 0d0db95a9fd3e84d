"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MINIMAL_MLPROJECT, write_codeset


@pytest.fixture
def codeset(tmp_path: Path):
    """Factory: codeset(files) with a minimal MLproject unless one is given."""

    def make(files: dict[str, str | bytes], name: str = "codeset") -> Path:
        return write_codeset(tmp_path / name, {"MLproject": MINIMAL_MLPROJECT, **files})

    return make
