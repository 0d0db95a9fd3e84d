"""Issue 28, point 10: builds sharing one steps cache (MLFLOW_STEPS_CACHE) at the same time both
succeed: cache entries are written under unique names and moved into place atomically, and two
builds about to fetch the same entry take turns on a file lock.

The race is staged, not hoped for: a base layer of 16 MiB (more than the loopback socket
buffers hold) is served by a hostile registry that sends all of it but the last byte at once
(so that client is reading it into its file) and holds the last byte until the other reader is
as far, or is blocked on a file lock (seen in /proc/locks)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from support.faulty_proxy import HOLD_SECONDS
from support.helpers import write_codeset
from support.hostile_registry import Exchange, HostileRegistry
from support.synthetic_base import push_synthetic_base

from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.layers import Entry, write_layer
from mlflow_steps.image.push import Blob, push_image

BIG = 16 << 20
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
PROJECT = "name: concurrent\nentry_points:\n  main:\n    command: python -c pass\n"
LAYER_FILE = """
import sys
from pathlib import Path
from mlflow_steps.build.direct.base_image import layer_file
from mlflow_steps.image.client import RegistryClient
address, repository, digest, size, cache = sys.argv[1:]
descriptor = {"mediaType": "MEDIA_TYPE", "digest": digest, "size": int(size)}
print(layer_file(RegistryClient(address), repository, descriptor, Path(cache)))
""".replace("MEDIA_TYPE", LAYER_TYPE)
CONDA_FETCH = """
import os, sys
from pathlib import Path
from mlflow_steps.build.conda_install import fetch
url, sha256, cache = sys.argv[1:]
record = {"name": "big", "url": url, "sha256": sha256}
print(fetch([record], Path(cache), os.environ, "conda.yaml", [])[0])
"""


CACHE_DIR = """
import os, sys
from mlflow_steps.build.conda_install import cache_dir
from mlflow_steps.core.errors import StepError
try:
    print(cache_dir(os.environ))
except StepError as error:
    print(error)
    sys.exit(error.exit_code)
"""


def waiting_on_a_file_lock(pids: set[int]) -> bool:
    """Whether one of ``pids`` is blocked in flock (a ``->`` line of /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:
            at = fields.index("->")
            if fields[at + 1] == "FLOCK" and int(fields[at + 4]) in pids:
                return True
    return False


class HeldBlob:
    """Serves ``data`` at its digest: all but the last byte at once, the last byte once two
    requests got that far or one of ``pids`` waits on a file lock (within HOLD_SECONDS)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.pids: set[int] = set()
        self.held = 0  # requests that got all but the last byte
        self.raced = False  # the last byte went out with both readers under way
        self._changed = threading.Condition()

    def _other_is_under_way(self) -> bool:
        return self.held >= 2 or waiting_on_a_file_lock(self.pids)

    def __call__(self, exchange: Exchange) -> None:
        handler = exchange.handler
        handler.send_response(200)
        for key, value in (("Content-Type", "application/octet-stream"),
                           ("Docker-Content-Digest", self.digest),
                           ("Content-Length", str(len(self.data)))):
            handler.send_header(key, value)
        handler.end_headers()
        # Returns only once the client reads the body, i.e. has its file open.
        handler.wfile.write(self.data[:-1])
        deadline = time.monotonic() + HOLD_SECONDS
        with self._changed:
            self.held += 1
            self._changed.notify_all()
            while not self._other_is_under_way() and time.monotonic() < deadline:
                self._changed.wait(0.05)
            self.raced = self.raced or self._other_is_under_way()
        handler.wfile.write(self.data[-1:])
        handler.wfile.flush()


def big_layer(work: Path, seed: int) -> tuple[Path, dict[str, object], str]:
    """A gzip layer of 16 MiB of random bytes: its path, descriptor and diff_id."""
    data = random.Random(seed).randbytes(BIG)
    layer = write_layer([Entry("srv", "dir"), Entry("srv/big.bin", "file", data=data,
                                                    mode=0o644)], work / "big.tar.gz", 0)
    return layer.path, layer.descriptor(), layer.diff_id


def leftovers(cache: Path) -> list[Path]:
    """Temporary files left in the cache (lock files stay by design)."""
    return [path for path in cache.rglob("*") if path.is_file() and (
        ".partial" in path.name or path.name.endswith(".part") or ".tmp" in path.name)]


def test_two_readers_of_one_blob_into_one_file_both_succeed(tmp_path: Path) -> None:
    """blob_to_file from two threads into the same path, both mid-download at once."""
    data = random.Random(10).randbytes(BIG)
    held = HeldBlob(data)
    out = tmp_path / "blobs" / held.digest.replace(":", "-")
    out.parent.mkdir()
    errors: list[BaseException] = []
    with HostileRegistry() as hostile:
        hostile.on("GET", f"/blobs/{held.digest}$", held, times=None)

        def fetch() -> None:
            try:
                RegistryClient(hostile.address).blob_to_file("race/blob", held.digest, out,
                                                             2 * BIG)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=fetch) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(2 * HOLD_SECONDS)
    assert held.held == 2 and held.raced
    assert not errors, errors
    assert out.read_bytes() == data
    assert [p.name for p in out.parent.iterdir()] == [out.name]



def assert_raced_once(processes: list[subprocess.Popen], held: HeldBlob,
                      hostile: HostileRegistry, path: str, cache: Path) -> None:
    """Both processes return the one checked entry, after a real race and one download."""
    held.pids.update(process.pid for process in processes)
    results = [process.communicate(timeout=2 * HOLD_SECONDS) for process in processes]
    downloads = len(hostile.requests("GET", path))
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
    paths = {Path(stdout.strip()) for stdout, _ in results}
    assert len(paths) == 1
    assert paths.pop().read_bytes() == held.data
    assert held.raced and downloads == 1
    assert not leftovers(cache)

def test_two_builds_needing_one_base_layer_download_it_once(tmp_path: Path) -> None:
    """layer_file from two processes on one cache: one downloads while the other waits on
    the entry's lock, then both return the same complete file."""
    path, descriptor, _ = big_layer(tmp_path, 11)
    held = HeldBlob(path.read_bytes())
    cache = tmp_path / "cache"
    with HostileRegistry() as hostile:
        hostile.on("GET", f"/blobs/{held.digest}$", held, times=None)
        processes = [subprocess.Popen(
            [sys.executable, "-c", LAYER_FILE, hostile.address, "race/layer", held.digest,
             str(descriptor["size"]), str(cache)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for _ in range(2)]
        assert_raced_once(processes, held, hostile, f"/blobs/{held.digest}$", cache)


def test_two_builds_needing_one_conda_archive_download_it_once(tmp_path: Path) -> None:
    """conda_stage.fetch from two processes on one cache: one downloads while the other waits
    on the entry's lock, then both return the same checked archive."""
    held = HeldBlob(random.Random(13).randbytes(BIG))
    cache = tmp_path / "cache"
    with HostileRegistry() as hostile:
        hostile.on("GET", "/big-1.0-0.conda$", held, times=None)
        processes = [subprocess.Popen(
            [sys.executable, "-c", CONDA_FETCH, f"{hostile.url}/conda-forge/noarch/big-1.0-0.conda",
             held.digest.removeprefix("sha256:"), str(cache)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for _ in range(2)]
        assert_raced_once(processes, held, hostile, "/big-1.0-0.conda$", cache)


def test_without_a_cache_directory_the_conda_cache_is_private(tmp_path: Path) -> None:
    """The fallback in the temp directory is this user's alone: one that others could write
    to (as if another user had made it first) is refused, never used."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "MLFLOW_STEPS_CACHE": str(blocker / "cache"),
           "TMPDIR": str(tmp_path / "tmp")}

    def cache_dir() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", CACHE_DIR], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    made = cache_dir()
    assert made.returncode == 0, made.stderr
    path = tmp_path / "tmp" / f"mlflow-steps-conda-{os.getuid()}"
    assert made.stdout.strip() == str(path) and path.stat().st_mode & 0o777 == 0o700
    path.chmod(0o777)
    refused = cache_dir()
    assert refused.returncode == 2
    assert refused.stdout.strip() == (f"cache: {path} is not a directory only this user can "
                                      "open: set MLFLOW_STEPS_CACHE to a cache directory")


def push_base(registry, work: Path, repository: str) -> tuple[HeldBlob, str]:
    """The synthetic base plus a 16 MiB layer, pushed to ``registry``; the held layer."""
    client = RegistryClient(registry.address)
    push_synthetic_base(client, work / "small", repository=repository)
    _, manifest = client.manifest(repository, "3.11")
    config = json.loads(client.blob(repository, manifest["config"]["digest"], 1 << 20))
    path, descriptor, diff_id = big_layer(work, 12)
    config["rootfs"]["diff_ids"].append(diff_id)
    config["history"].append({})
    push_image(client, repository, "3.11", config,
               [Blob(dict(manifest["layers"][0])), Blob(descriptor, path=path)], work)
    return HeldBlob(path.read_bytes()), f"{repository}:3.11"


def image_file(client: RegistryClient, repository: str, manifest: dict, name: str) -> bytes:
    """The file ``name`` from the image's layers (the last layer that has it)."""
    found = None
    for layer in manifest["layers"]:
        data = client.blob(repository, layer["digest"], 1 << 30)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            member = next((m for m in tar.getmembers() if m.name == name), None)
            if member is not None:
                found = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert found is not None, name
    return found


def build_both(registry, tmp_path: Path, requirements: tuple[str, str],
               warm_cache: Callable[[Path], str] | None = None) -> list[tuple[str, str]]:
    """Two `mlflow-steps build --builder direct` started at once on one cache (uv's too),
    whose base comes through the hostile registry; each image's (digest, lock.txt). With
    ``warm_cache``, the cache starts with the session's layers."""
    held, base = push_base(registry, tmp_path / "base", "concurrent/base")
    cache = tmp_path / "cache"
    if warm_cache:
        warm_cache(cache)
    env = {**os.environ, "MLFLOW_STEPS_CACHE": str(cache), "UV_CACHE_DIR": str(cache / "uv"),
           "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    client = RegistryClient(registry.address)
    with HostileRegistry(upstream=f"http://{registry.address}") as hostile:
        hostile.on("GET", f"/blobs/{held.digest}$", held, times=None)
        processes = []
        for index, text in enumerate(requirements):
            codeset = write_codeset(tmp_path / f"codeset-{index}", {
                "MLproject": PROJECT, "requirements.txt": text})
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "mlflow_steps", "build", str(codeset), "--builder",
                 "direct", "--registry", registry.address, "--base-image",
                 f"{hostile.address}/{base}", "--repository", f"concurrent/image-{index}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        held.pids.update(process.pid for process in processes)
        results = [process.communicate(timeout=600) for process in processes]
        downloads = len(hostile.requests("GET", f"/blobs/{held.digest}$"))
    images = []
    for process, (stdout, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr[-3000:]
        assert "does not apply" not in stderr
        repository, tag = stdout.strip().split("/", 1)[1].rsplit(":", 1)
        digest, manifest = client.manifest(repository, tag)
        assert held.digest in [layer["digest"] for layer in manifest["layers"]]
        lock = image_file(client, repository, manifest, "opt/mlflow-steps-build/lock.txt")
        images.append((digest, lock.decode()))
    assert held.raced and downloads == 1
    assert not leftovers(cache)
    assert not any((cache / "work").iterdir())
    return images


def test_two_builds_of_one_codeset_on_one_cache_at_once(registry, tmp_path: Path) -> None:
    images = build_both(registry, tmp_path, ("six==1.16.0\n", "six==1.16.0\n"))
    assert images[0][0] == images[1][0]  # the same image, reproducibly
    assert "six==1.16.0" in images[0][1]


def test_two_builds_of_two_codesets_on_one_cache_at_once(registry, warm_cache,
                                                         tmp_path: Path) -> None:
    """Each its own image and lock (the step tooling's layers are the session's: the two
    builds at once on one cache of the same layers are the test above)."""
    images = build_both(registry, tmp_path, ("six==1.16.0\n", "six==1.15.0\n"), warm_cache)
    assert images[0][0] != images[1][0]
    assert "six==1.16.0" in images[0][1] and "six==1.15.0" not in images[0][1]
    assert "six==1.15.0" in images[1][1] and "six==1.16.0" not in images[1][1]
