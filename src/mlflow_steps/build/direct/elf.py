"""Shared-library needs of the ELF files in an environment (``DT_NEEDED``), checked against
what the environment itself bundles and the base's library directories."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Libraries:
    """The environment's ELF files: each shared object (``.so`` in its name) and ``bin/``
    program → its ``DT_NEEDED`` names; and of them, those loaded only on demand."""

    needs: dict[Path, tuple[str, ...]]
    on_demand: frozenset[Path]

    def unmet(self, paths: list[Path], available: frozenset[str], prefix: Path
              ) -> tuple[dict[str, str], dict[str, str]]:
        """Of ``paths``' needs not ``available`` (file names in the environment and the
        base): (needed library → the first file needing it, relative to ``prefix``), for
        files always loaded, then for files loaded on demand only."""
        missing: dict[str, str] = {}
        optional: dict[str, str] = {}
        for path in sorted(paths):
            unmet = [name for name in self.needs.get(path, ()) if name not in available]
            for name in unmet:
                (optional if path in self.on_demand else missing).setdefault(
                    name, str(path.relative_to(prefix)))
        return missing, optional


def environment_libraries(prefix: Path) -> Libraries:
    """The ELF files under ``prefix``, read once. Loaded on demand only: a shared object
    Python cannot import (a versioned name such as ``nvshmem_transport_libfabric.so.3``)
    that no ELF of the environment names, by itself or by a link to it: a plugin a library
    opens with dlopen when asked for (NVSHMEM's network transports), whose own needs matter
    only then."""
    needs: dict[Path, tuple[str, ...]] = {}
    links: list[Path] = []
    for directory, _, files in os.walk(prefix):
        for name in files:
            path = Path(directory, name)
            if path.is_symlink():
                if ".so" in name:
                    links.append(path)
            elif ".so" in name or path.parent.name == "bin":
                needs[path] = tuple(needed_libraries(path))
    linked = {name for names in needs.values() for name in names}
    reached = {os.path.realpath(path) for path in [*needs, *links] if path.name in linked}
    return Libraries(needs, frozenset(
        path for path in needs if not path.name.endswith(".so")
        and path.parent.name != "bin" and os.path.realpath(path) not in reached))
