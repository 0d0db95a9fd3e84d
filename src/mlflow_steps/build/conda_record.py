"""Runs inside a conda image's build: the lock and the SBOM list the conda packages (which the
builder recorded from conda-meta, ``conda_install.write_conda_record``) and then the Python
distributions (``uv pip freeze``, ``cyclonedx-py``). The environment's own interpreter runs
it without ``site`` (``python -I -S merge.py ...``): standard library only, nothing of the
environment imported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

LOCK = "lock.txt"  # the conda packages' lines, written by the builder
COMPONENTS = "components.cdx.json"  # their CycloneDX components and dependencies
PYTHON_HEADER = "# Python distributions (uv pip freeze)\n"


def merge(record: Path, frozen: Path, lock: Path, sbom: Path) -> None:
    """Write ``lock``: ``record``'s conda lines, then ``frozen``; add ``record``'s components
    and dependencies to the CycloneDX JSON ``sbom``."""
    lock.write_text((record / LOCK).read_text() + PYTHON_HEADER + frozen.read_text())
    document = json.loads(sbom.read_text())
    conda = json.loads((record / COMPONENTS).read_text())
    for key in ("components", "dependencies"):
        document[key] = [*(document.get(key) or []), *conda[key]]
    sbom.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    merge(*(Path(argument) for argument in sys.argv[1:5]))
