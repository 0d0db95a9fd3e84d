"""Runs inside a conda image's build (the direct builder calls it on its staged tree): the
lock and the SBOM list the conda packages (which the builder recorded from conda-meta,
``conda_install.write_conda_record``) and then the Python distributions (``uv pip freeze``,
``cyclonedx-py``); the distributions pip installed (not conda, not the step tooling) are
listed for the image's PEP 751 record. The environment's own interpreter runs it without
``site`` (``python -I -S merge.py ...``): standard library only, nothing of the environment
imported."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

LOCK = "lock.txt"  # the conda packages' lines, written by the builder
COMPONENTS = "components.cdx.json"  # their CycloneDX components and dependencies
PYTHON_HEADER = "# Python distributions (uv pip freeze)\n"
TOOLING = "mlflow-steps"


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installer(dist_info: Path) -> str:
    try:
        return (dist_info / "INSTALLER").read_text().strip()
    except OSError:
        return ""


def merge(record: Path, frozen: Path, lock: Path, sbom: Path, pip_part: Path,
          prefix: Path = Path(sys.prefix)) -> None:
    """Write ``lock``: ``record``'s conda lines, then ``frozen``; add ``record``'s components
    and dependencies to the CycloneDX JSON ``sbom``; write ``pip_part``: the lines of
    ``frozen`` that conda did not install in the environment at ``prefix`` (nor are the step
    tooling)."""
    lock.write_text((record / LOCK).read_text() + PYTHON_HEADER + frozen.read_text())
    by_conda = {_name(path.name.split("-")[0]) for path in prefix.glob(
        "lib/python*/site-packages/*.dist-info") if _installer(path) == "conda"}
    pip_part.write_text("".join(
        line + "\n" for line in frozen.read_text().splitlines()
        if line.strip() and _name(re.split(r"[=@ ]", line, maxsplit=1)[0])
        not in by_conda | {TOOLING}))
    document = json.loads(sbom.read_text())
    conda = json.loads((record / COMPONENTS).read_text())
    for key in ("components", "dependencies"):
        document[key] = [*(document.get(key) or []), *conda[key]]
    sbom.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    merge(*(Path(argument) for argument in sys.argv[1:6]))
