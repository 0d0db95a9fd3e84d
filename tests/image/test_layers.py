"""Deterministic layers: order, times and compression never depend on how the tar was made."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
import zlib
from pathlib import Path

from mlflow_steps.image.layers import GZIP_MEMBER, Entry, compress, rewrite, write_layer

EPOCH = 315_600_000


def make_tar(entries: list[tuple[str, str, bytes | str]], mtime: int) -> bytes:
    """A tar of (name, kind, data-or-link-target) in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def rewritten(data: bytes, out: Path, epoch: int | None = EPOCH):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as source:
        return rewrite(source, source.getmembers(), out, epoch)


ENTRIES = [("opt", "dir", ""), ("opt/env", "dir", ""), ("opt/env/b.py", "file", "b = 1\n"),
           ("opt/env/a.py", "file", "a = 1\n"), ("opt/env/z-data", "file", b"\x00" * 5000),
           ("opt/env/link-to-z", "link", "opt/env/z-data")]


def test_same_files_in_another_order_and_time_give_one_digest(tmp_path: Path) -> None:
    first = rewritten(make_tar(ENTRIES, mtime=1_700_000_000), tmp_path / "1.tgz")
    shuffled = [ENTRIES[i] for i in (4, 3, 1, 0, 2)] + [ENTRIES[5]]
    second = rewritten(make_tar(shuffled, mtime=1_800_000_000), tmp_path / "2.tgz")
    assert (first.digest, first.diff_id) == (second.digest, second.diff_id)
    assert first.size == (tmp_path / "1.tgz").stat().st_size
    assert first.digest == "sha256:" + hashlib.sha256((tmp_path / "1.tgz").read_bytes()).hexdigest()
    plain = gzip.decompress((tmp_path / "1.tgz").read_bytes())
    assert first.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    changed = rewritten(make_tar([*ENTRIES[:2], ("opt/env/b.py", "file", "b = 2\n"),
                                  *ENTRIES[3:]], mtime=1_700_000_000), tmp_path / "3.tgz")
    assert changed.diff_id != first.diff_id


def test_times_are_clamped_to_the_epoch_and_older_ones_kept(tmp_path: Path) -> None:
    newer = rewritten(make_tar(ENTRIES, mtime=1_700_000_000), tmp_path / "new.tgz")
    with tarfile.open(newer.path, "r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {EPOCH}
        assert all("atime" not in m.pax_headers and "ctime" not in m.pax_headers
                   for m in tar.getmembers())
    older = rewritten(make_tar(ENTRIES, mtime=300_000_000), tmp_path / "old.tgz")
    with tarfile.open(older.path, "r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {300_000_000}
    kept = rewritten(make_tar(ENTRIES, mtime=1_700_000_000), tmp_path / "kept.tgz", epoch=None)
    with tarfile.open(kept.path, "r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_700_000_000}


def test_hard_links_follow_the_file_they_name(tmp_path: Path) -> None:
    """The link sorts before its target: the first name by order carries the data."""
    layer = rewritten(make_tar(ENTRIES, mtime=1), tmp_path / "l.tgz")
    with tarfile.open(layer.path, "r:gz") as tar:
        names = [m.name for m in tar.getmembers()]
        link = tar.getmember("opt/env/z-data")
        holder = tar.getmember("opt/env/link-to-z")
        assert names.index("opt/env/link-to-z") < names.index("opt/env/z-data")
        assert holder.isreg() and holder.size == 5000
        assert link.islnk() and link.linkname == "opt/env/link-to-z"
        tar.extractall(tmp_path / "out", filter="tar")
    assert (tmp_path / "out/opt/env/z-data").read_bytes() == b"\x00" * 5000
    assert (tmp_path / "out/opt/env/z-data").stat().st_ino == (
        tmp_path / "out/opt/env/link-to-z").stat().st_ino


def test_compress_keeps_the_tar_and_is_deterministic(tmp_path: Path) -> None:
    data = make_tar(ENTRIES, mtime=1_700_000_000)
    first = compress(io.BytesIO(data), tmp_path / "a.tgz")
    second = compress(io.BytesIO(data), tmp_path / "b.tgz")
    assert first.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (tmp_path / "a.tgz").read_bytes() == (tmp_path / "b.tgz").read_bytes()
    assert first.digest == second.digest


def gzip_members(data: bytes) -> int:
    count = 0
    while data:
        member = zlib.decompressobj(31)
        member.decompress(data)
        assert member.eof
        data, count = member.unused_data, count + 1
    return count


def test_large_layers_are_gzip_members_whatever_the_writes(tmp_path: Path) -> None:
    payload = random.Random(7).randbytes(2 * GZIP_MEMBER + 12345)
    entries = [Entry("opt/env/big.bin", "file", data=payload, mode=0o644),
               Entry("opt/env/after.txt", "file", data=b"after the first member\n")]
    written = write_layer(entries, tmp_path / "a.tgz", EPOCH)  # header and data writes
    tar = gzip.decompress((tmp_path / "a.tgz").read_bytes())
    assert written.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert gzip_members((tmp_path / "a.tgz").read_bytes()) == len(tar) // GZIP_MEMBER + 1
    for size in (4097, GZIP_MEMBER + 1):  # other write sizes, the same bytes
        source = io.BytesIO(tar)
        source.read = lambda n=-1, src=source, size=size: io.BytesIO.read(src, min(n, size))
        assert compress(source, tmp_path / f"{size}.tgz").digest == written.digest
    with tarfile.open(tmp_path / "a.tgz", "r:gz") as layer:
        assert [m.name for m in layer] == ["opt/env/after.txt", "opt/env/big.bin"]
        handle = layer.extractfile("opt/env/big.bin")
        assert handle is not None and handle.read() == payload
