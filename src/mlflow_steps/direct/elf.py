"""Shared-library needs of the ELF files in an environment (``DT_NEEDED``), checked against
what the environment itself bundles and the base's library directories."""

from __future__ import annotations

import os
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

_MAGIC = b"\x7fELF"


def needed_libraries(path: Path) -> list[str]:
    """The ``DT_NEEDED`` names of the ELF file at ``path`` ([] for anything else)."""
    with path.open("rb") as handle:
        if handle.read(4) != _MAGIC:
            return []
        handle.seek(0)
        try:
            elf = ELFFile(handle)
            return [tag.needed for section in elf.iter_sections()
                    if isinstance(section, DynamicSection)
                    for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
        except ELFError:
            return []


def missing_libraries(prefix: Path, base_libraries: frozenset[str]) -> dict[str, str]:
    """Needed library → the first file (relative to ``prefix``) that needs it, for the
    libraries neither the environment nor the base has."""
    bundled: set[str] = set()
    candidates: list[Path] = []
    for directory, subdirectories, files in os.walk(prefix):
        bundled.update(files, subdirectories)
        candidates += [Path(directory, name) for name in files
                       if ".so" in name or os.path.basename(directory) == "bin"]
    missing: dict[str, str] = {}
    for path in sorted(candidates):
        if path.is_symlink():
            continue
        for name in needed_libraries(path):
            if name not in bundled and name not in base_libraries:
                missing.setdefault(name, str(path.relative_to(prefix)))
    return missing
