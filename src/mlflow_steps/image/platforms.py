"""Image platforms (``os/architecture``), as `docker build --platform` names them: which ones
a build can target, and the one grammar the step input is read with."""

from __future__ import annotations

from mlflow_steps.core.errors import StepError

DEFAULT_PLATFORMS = ("linux/amd64",)
# What the direct builder targets (no engine emulates a foreign CPU for it), with the CPU
# name wheels and environment markers use.
MACHINES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
CONDA_SUBDIRS = {"linux/amd64": "linux-64", "linux/arm64": "linux-aarch64"}
_ALIASES = {"linux/arm64/v8": "linux/arm64", "linux/x86_64": "linux/amd64",
            "linux/aarch64": "linux/arm64"}


def parse_platforms(text: str) -> tuple[str, ...]:
    """A comma-separated platform list, normalised, each once, in order (empty: the
    default); one line naming the ``platform`` input for one not known here."""
    platforms: list[str] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        platform = _ALIASES.get(item, item)
        if platform not in MACHINES:
            raise StepError(f"'{item}' is not a platform this builder targets "
                            f"({', '.join(MACHINES)})", source="input", field="platform")
        if platform not in platforms:
            platforms.append(platform)
    return tuple(platforms) or DEFAULT_PLATFORMS


def architecture(platform: str) -> str:
    """The image config's architecture of ``platform`` (linux/arm64 → arm64)."""
    return platform.split("/")[1]


def machine(platform: str) -> str:
    """The CPU name of ``platform`` in wheel tags and markers (x86_64, aarch64)."""
    return MACHINES[platform]


def conda_subdir(platform: str) -> str:
    """The conda subdir of ``platform`` (linux/arm64 → linux-aarch64)."""
    return CONDA_SUBDIRS[platform]


def environment_markers(python_version: str, cpu: str) -> dict[str, str]:
    """The environment markers (PEP 508) of CPython ``python_version`` (X.Y.Z) on Linux on
    ``cpu`` (x86_64, aarch64)."""
    return {"implementation_name": "cpython", "implementation_version": python_version,
            "os_name": "posix", "platform_machine": cpu, "platform_release": "",
            "platform_system": "Linux", "platform_version": "",
            "platform_python_implementation": "CPython", "python_full_version": python_version,
            "python_version": ".".join(python_version.split(".")[:2]),
            "sys_platform": "linux"}
