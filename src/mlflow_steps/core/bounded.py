"""The one bounded reader (codeset, workflow and extension files; blobs, layers and JSON
from a registry) and codeset confinement.

Every input file is read here: symlinks that dangle or loop are named as such, anything but
a regular file (a FIFO would block forever, a device never ends) is refused before it is
opened for reading, and the size is bounded before and while reading. Untrusted compressed
data is decompressed as it is read and bounded by what comes out (a gzip bomb costs no
memory), and untrusted JSON is bounded in depth; each failure is one line.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import stat
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact

MAX_ENV_FILE_BYTES = 5 * 1024 * 1024
MAX_FILE_BYTES = MAX_ENV_FILE_BYTES  # one bound for every file read as input
MAX_JSON_DEPTH = 64  # manifests, configs and SBOMs nest a few levels; more is hostile
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def quoted(text: str, limit: int = 120) -> str:
    """User text for a message: redacted, one line, bounded, in quotes."""
    text = redact(text).replace("\n", "\\n").replace("\r", "\\r")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def broken_link(path: Path) -> str | None:
    """'symlink to X does not resolve' / 'symlink loops' when ``path`` is a broken link."""
    try:
        os.stat(path)
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loops (it resolves back to itself); fix or remove it"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"symlink to {quoted(target)} does not resolve; fix or remove it"
        return None


def _resolve(path: Path, *, source: str, field: str | None) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: "Symlink loop" (Python < 3.13)
        raise StepError(f"symlink {quoted(str(path.name))} loops (it resolves back to "
                        "itself); fix or remove it", source=source, field=field) from None


def resolve_inside(
    codeset: Path, base_dir: Path, reference: str, *, source: str, field: str | None
) -> Path:
    """Resolve ``reference`` (relative to ``base_dir``) and make sure it stays in the codeset."""
    if not reference:
        raise StepError("empty path", source=source, field=field)
    if "\x00" in reference:
        raise StepError("path contains a NUL byte", source=source, field=field)
    if PurePosixPath(reference).is_absolute() or Path(reference).is_absolute():
        raise StepError(
            f"{quoted(reference)} is an absolute path; use a path relative to the codeset",
            source=source,
            field=field,
        )
    root = _resolve(codeset, source=source, field=field)
    given = base_dir / reference
    target = _resolve(given, source=source, field=field)
    if target != root and root not in target.parents:
        raise StepError(
            f"{quoted(reference)} points outside the codeset; environment files must live in it",
            source=source,
            field=field,
        )
    problem = broken_link(given)
    if problem:
        raise StepError(f"{quoted(reference)}: {problem}", source=source, field=field)
    return target


def relative_name(codeset: Path, path: Path) -> str:
    """The codeset-relative POSIX name of ``path``, for messages and hashes."""
    root = _resolve(codeset, source=codeset.name, field=None)
    target = _resolve(path, source=path.name, field=None)
    try:
        return target.relative_to(root).as_posix()
    except ValueError:
        raise StepError("points outside the codeset; codeset files must live in it",
                        source=path.name) from None


def read_bounded_bytes(path: Path, *, source: str, limit: int = MAX_FILE_BYTES,
                       what: str = "environment files") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is one line."""
    try:
        info = os.stat(path)
    except OSError as exc:
        problem = broken_link(path)
        if problem:
            raise StepError(problem, source=source) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise StepError("file not found", source=source) from None
        raise StepError(f"cannot read: {exc.strerror}", source=source) from None
    if not stat.S_ISREG(info.st_mode):
        raise StepError(f"{_kind(info.st_mode)}, not a regular file", source=source)
    _check_size(info.st_size, limit, source, what)
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since stat, open returns
        # at once and fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise StepError(f"cannot read: {exc.strerror}", source=source) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StepError(f"{_kind(info.st_mode)}, not a regular file", source=source)
        data = handle.read(limit + 1)
    _check_size(len(data), limit, source, what)
    return data


def _check_size(size: int, limit: int, source: str, what: str) -> None:
    if size > limit:
        raise StepError(
            f"file is {size / 1e6:.1f} MB, over the {_mib(limit)} MiB limit for "
            f"{what}", source=source)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g}"


class BoundedStream(io.RawIOBase):
    """``raw`` read as it is, one line (StepError) once more than ``limit`` bytes came out of
    it or it fails to decompress."""

    def __init__(self, raw: IO[bytes], limit: int, *, source: str, what: str,
                 errors: tuple[type[Exception], ...] = ()) -> None:
        super().__init__()
        self._raw, self._limit, self._source, self._what = raw, limit, source, what
        self._errors = (OSError, EOFError, zlib.error, *errors)
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self._raw.read(min(len(buffer), self._limit - self._count + 1))
        except self._errors as exc:
            raise StepError(f"{self._what} does not decompress ({type(exc).__name__})",
                            source=self._source) from None
        self._count += len(data)
        if self._count > self._limit:
            raise StepError(f"{self._what} is over the {_mib(self._limit)} MiB limit "
                            "(decompressed)", source=self._source)
        buffer[:len(data)] = data
        return len(data)


def decompressed(data: bytes, *, limit: int, source: str, what: str) -> IO[bytes]:
    """``data`` (gzip, zstd or as it is) as a stream of at most ``limit`` bytes, decompressed
    while it is read: reading past ``limit`` is one line, never a large allocation."""
    raw: IO[bytes] = io.BytesIO(data)
    errors: tuple[type[Exception], ...] = ()
    if data[:2] == _GZIP_MAGIC:
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    elif data[:4] == _ZSTD_MAGIC:
        import zstandard  # zstd layers only; most are gzip

        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        errors = (zstandard.ZstdError,)
    return io.BufferedReader(BoundedStream(raw, limit, source=source, what=what,
                                           errors=errors))


def read_limited(stream: IO[bytes], limit: int, *, source: str, what: str) -> bytes:
    """At most ``limit`` bytes of ``stream``; more is one line."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise StepError(f"{what} is over the {_mib(limit)} MiB limit", source=source)
    return data


def load_json(data: bytes | str, *, source: str, what: str) -> object:
    """Untrusted JSON, at most MAX_JSON_DEPTH levels deep; anything else is one line."""
    try:
        value = json.loads(data)
        deep = _json_depth(value) > MAX_JSON_DEPTH
    except RecursionError:
        deep = True
    except ValueError:
        raise StepError(f"{what} is not JSON", source=source) from None
    if deep:
        raise StepError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", source=source)
    return value


def _json_depth(value: object) -> int:
    """How deep ``value`` nests (iteratively: it may be as deep as the parser allowed);
    stops counting past MAX_JSON_DEPTH."""
    deepest, pending = 0, [(value, 1)]
    while pending and deepest <= MAX_JSON_DEPTH:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in children)
    return deepest


def read_bounded_text(path: Path, *, source: str, limit: int = MAX_FILE_BYTES,
                      what: str = "environment files") -> str:
    """A bounded regular file as UTF-8 text (BOM dropped); binary content is refused."""
    data = read_bounded_bytes(path, source=source, limit=limit, what=what)
    if b"\x00" in data:
        raise StepError("binary content, expected a text file", source=source)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StepError(f"not UTF-8 text (byte {exc.start})", source=source) from None


def read_env_text(codeset: Path, path: Path) -> str:
    """Read an environment file as text: confined, bounded size, UTF-8, CRLF folded to LF."""
    name = relative_name(codeset, path)
    text = read_bounded_text(path, source=name)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, streamed."""
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes with ``algorithm`` (a hashlib name), streamed."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
