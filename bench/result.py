"""One bench's measurements as bench/results/<bench>.json, which bench/report.py turns into
docs/performance.md: the machine's facts, one or more tables of contenders, the ratios.

A table's row maps each column to a number, a list of samples (shown as median and
min-max) or None (not measured). A ratio may carry a goal: the largest value it should be.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

Value = float | int | list[float] | None


def table(title: str, units: dict[str, str], rows: dict[str, dict[str, Value]],
          labels: dict[str, str] | None = None) -> dict:
    """A table: ``units`` names the columns in order (column -> unit), ``rows`` the
    contenders in order (name -> column -> value); ``labels`` says what a short name is."""
    labels = labels or {}
    return {"title": title, "units": units,
            "rows": [{"name": name, "label": labels.get(name, name), "values": values}
                     for name, values in rows.items()]}


def ratio(name: str, value: float, goal: float | None = None, unit: str = "x") -> dict:
    return {"name": name, "value": value, "unit": unit, "goal": goal}


def docker_engine(cli: Callable[..., subprocess.CompletedProcess]) -> str:
    """'Docker <server version>, <storage driver>' of the engine ``cli`` talks to (a
    devstack DockerEngine's ``cli``)."""
    version = cli("version", "--format", "{{.Server.Version}}").stdout.strip()
    driver = cli("info", "--format", "{{.Driver}}").stdout.strip()
    return f"Docker {version}, {driver}"


def buildah_version() -> str:
    """'buildah version X (image-spec ...)' of the host's buildah."""
    return subprocess.run(["buildah", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def rounded(value: Any) -> Any:
    """``value`` with every float rounded to 4 decimals (what a timer or a size can tell)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def cpu_model() -> str:
    """The first processor's model name (Linux), else the machine type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def write_result(bench: str, title: str, settings: dict[str, Any], tables: list[dict],
                 ratios: list[dict], engine: str | None = None,
                 checks: dict[str, str] | None = None) -> Path:
    """Write bench/results/<bench>.json (``checks``: outcomes that are not numbers, such as
    'same tag for both': 'yes') and say where."""
    now = datetime.datetime.now(datetime.timezone.utc)
    machine = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
               "cpu": cpu_model(), "kernel": platform.release(),
               "python": platform.python_version(), "engine": engine}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{bench}.json"
    path.write_text(json.dumps(rounded({
        "bench": bench, "title": title, "machine": machine, "settings": settings,
        "tables": tables, "ratios": ratios, "checks": checks or {}}), indent=2) + "\n")
    print(f"results: {path.relative_to(RESULTS.parent.parent)}")
    return path
