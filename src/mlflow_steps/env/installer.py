"""The uv that installs every environment: bind-mounted by a Dockerfile's RUN (never in a
layer), run by the direct builder, by pinning and to read a uv.lock."""

from __future__ import annotations

from pathlib import Path


def uv_binary() -> Path:
    """uv's executable, from its Python package."""
    import uv  # uv's package is looked up only when something runs uv

    return Path(uv.find_uv_bin())
