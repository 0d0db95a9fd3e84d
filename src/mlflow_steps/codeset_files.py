"""Confined, bounded reading of files inside a codeset."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from mlflow_steps.errors import StepError

MAX_ENV_FILE_BYTES = 5 * 1024 * 1024


def resolve_inside(
    codeset: Path, base_dir: Path, reference: str, *, source: str, field: str | None
) -> Path:
    """Resolve ``reference`` (relative to ``base_dir``) and make sure it stays in the codeset."""
    if not reference:
        raise StepError("empty path", source=source, field=field)
    if PurePosixPath(reference).is_absolute() or Path(reference).is_absolute():
        raise StepError(
            f"'{reference}' is an absolute path; use a path relative to the codeset",
            source=source,
            field=field,
        )
    root = codeset.resolve()
    target = (base_dir / reference).resolve()
    if target != root and root not in target.parents:
        raise StepError(
            f"'{reference}' points outside the codeset; environment files must live in it",
            source=source,
            field=field,
        )
    return target


def relative_name(codeset: Path, path: Path) -> str:
    """The codeset-relative POSIX name of ``path``, for messages and hashes."""
    return path.resolve().relative_to(codeset.resolve()).as_posix()


def read_env_text(codeset: Path, path: Path) -> str:
    """Read an environment file as text: bounded size, UTF-8, CRLF folded to LF."""
    name = relative_name(codeset, path)
    if not path.is_file():
        raise StepError("file not found", source=name)
    size = path.stat().st_size
    if size > MAX_ENV_FILE_BYTES:
        raise StepError(
            f"file is {size / 1e6:.1f} MB, over the {MAX_ENV_FILE_BYTES // (1024 * 1024)} MiB "
            "limit for environment files",
            source=name,
        )
    data = path.read_bytes()
    if b"\x00" in data:
        raise StepError("binary content, expected a text file", source=name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StepError(f"not UTF-8 text (byte {exc.start})", source=name) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
