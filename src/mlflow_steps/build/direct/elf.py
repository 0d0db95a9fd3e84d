"""Shared-library needs of the ELF files in an environment (``DT_NEEDED``), checked against
what the environment itself bundles and the base's library directories."""

from __future__ import annotations

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


def missing_libraries(prefix: Path, paths: list[Path], available: frozenset[str]
                      ) -> dict[str, str]:
    """Needed library → the first of ``paths`` (named relative to ``prefix``) that needs it,
    for the libraries not ``available`` (file names in the environment and the base)."""
    missing: dict[str, str] = {}
    for path in sorted(paths):
        if (".so" not in path.name and path.parent.name != "bin") or path.is_symlink():
            continue
        for name in needed_libraries(path):
            if name not in available:
                missing.setdefault(name, str(path.relative_to(prefix)))
    return missing
