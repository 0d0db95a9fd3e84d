"""The OCI distribution API of one registry: manifests, blobs, uploads, checked by digest.

Everything fetched by digest (manifests, index children, blobs) is checked against that
digest before use; after a manifest PUT the registry's ``Docker-Content-Digest`` (or, when
it sends none, the digest it then serves under the reference) must be that of what was
sent. Every request goes through the registry's ``transport.Transport`` (TLS, credentials,
retries, the network budget).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

from urllib3 import BaseHTTPResponse
from urllib3.exceptions import HTTPError

from mlflow_steps.core.cache import temporary_beside
from mlflow_steps.core.deadline import Deadline
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.retry import BACKOFF, RETRIES
from mlflow_steps.image.transport import Transport, reason

_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
UPLOAD_FLOOR_BYTES_PER_SECOND = 1 << 20  # an upload's budget grows by 1 s per MiB
UPLOAD_CHUNK = 64 << 20  # larger blobs go up in chunks of this size (bounded memory)
_VERIFIABLE = ("sha256", "sha512")  # digest algorithms content is checked against (OCI's)


class RegistryClients:
    """A command's registry clients: one per registry host, made when first asked for, all
    with the command's options; passed down, so a token or a TLS fallback learnt once
    serves the whole command."""

    def __init__(self, *, insecure_registries: tuple[str, ...] = (),
                 verify: bool | str = True, environ: dict[str, str] | None = None) -> None:
        self.insecure_registries, self.verify = insecure_registries, verify
        self.environ = environ
        self._clients: dict[str, RegistryClient] = {}

    def client(self, host: str) -> RegistryClient:
        """The client of the registry at ``host``."""
        if host not in self._clients:
            self._clients[host] = RegistryClient(
                host, insecure_registries=self.insecure_registries, verify=self.verify,
                environ=self.environ)
        return self._clients[host]


class RegistryClient:
    """One registry's manifests and blobs (a command makes one per host: RegistryClients)."""

    def __init__(self, host: str, *, insecure_registries: tuple[str, ...] = (),
                 verify: bool | str = True, environ: dict[str, str] | None = None,
                 retries: int = RETRIES, backoff: float = BACKOFF,
                 budget: float | None = None) -> None:
        self.host = host
        self.transport = Transport(host, insecure_registries=insecure_registries,
                                   verify=verify, environ=environ, retries=retries,
                                   backoff=backoff, budget=budget)

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        """Digest of repository:tag, None when the registry says it does not exist."""
        with self.transport.redacting():
            return self._manifest_digest(repository, tag)

    def _manifest_digest(self, repository: str, tag: str) -> str | None:
        response, url, deadline = self._pull("HEAD", "manifests", repository, tag)
        if response.status == 404:
            return None
        if response.status == 200:
            digest = response.headers.get("Docker-Content-Digest", "").strip()
            if not _DIGEST.fullmatch(digest):
                problem = (f"a Docker-Content-Digest that is not a digest ({digest[:80]!r})"
                           if digest else "no Docker-Content-Digest header")
                raise StepError(f"manifest HEAD {url} answered HTTP 200 with {problem}",
                                source=self.transport.source)
            return digest
        raise self.transport.failure(response, f"manifest HEAD {url}", deadline)

    def manifest(self, repository: str, reference: str,
                 platform: str = "linux/amd64") -> tuple[str, dict]:
        """The image manifest of repository:reference (for an index: its ``platform`` one)
        and its digest."""
        with self.transport.redacting():
            digest, manifest = self._get_manifest(repository, reference)
            if "manifests" in manifest:  # an index: the platform we build for
                entries = manifest["manifests"]
                os_name, _, architecture = platform.partition("/")
                chosen = next((m for m in (entries if isinstance(entries, list) else [])
                               if isinstance(m, dict) and isinstance(m.get("platform"), dict)
                               and m["platform"].get("os") == os_name
                               and m["platform"].get("architecture") == architecture), None)
                if chosen is None:
                    raise StepError(f"{repository}:{reference} has no {platform} image",
                                    source=self.transport.source)
                child = chosen.get("digest")
                self._check_digest(child if isinstance(child, str) else "")
                digest, manifest = self._get_manifest(repository, child)
            return digest, manifest

    def served(self, repository: str, reference: str) -> tuple[str, dict]:
        """What repository:reference names, as served (an image index stays one), and its
        digest."""
        with self.transport.redacting():
            return self._get_manifest(repository, reference)

    def blob(self, repository: str, digest: str, limit: int) -> bytes:
        """The blob ``digest`` (at most ``limit`` bytes), checked against its digest."""
        with self.transport.redacting():
            return self._blob(repository, digest, limit)

    def blob_to_file(self, repository: str, digest: str, out: Path, limit: int) -> None:
        """Stream the blob ``digest`` (at most ``limit`` bytes) into ``out``, checked against
        its digest; nothing is left at ``out`` when it fails."""
        with self.transport.redacting():
            algorithm = self._check_digest(digest)
            deadline = Deadline(self.transport.budget + limit / UPLOAD_FLOOR_BYTES_PER_SECOND)
            path = f"/v2/{repository}/blobs/{digest}"
            response = self.transport.request("blob GET", "GET", path, deadline=deadline,
                                     scope=f"repository:{repository}:pull", stream=True)
            url = f"{self.transport.base_url}{path}"
            if response.status != 200:
                raise self.transport.failure(response, f"blob GET {url}", deadline)
            partial = temporary_beside(out)  # two builds may fetch it at once
            hasher, size = hashlib.new(algorithm), 0
            try:
                with response, partial.open("wb") as sink:
                    for chunk in response.stream(1 << 20):
                        size += len(chunk)
                        if size > limit:
                            raise StepError(f"blob {digest} is over {limit} bytes",
                                            source=self.transport.source)
                        hasher.update(chunk)
                        sink.write(chunk)
                self._verify(f"blob GET {url}", f"{algorithm}:{hasher.hexdigest()}", digest)
                partial.replace(out)
            except HTTPError as exc:
                raise StepError(f"blob GET {url} failed ({reason(exc)})",
                                source=self.transport.source) from None
            finally:
                partial.unlink(missing_ok=True)

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether ``repository`` already holds the blob ``digest``."""
        with self.transport.redacting():
            deadline = Deadline(self.transport.budget)
            path = f"/v2/{repository}/blobs/{digest}"
            response = self.transport.request("blob HEAD", "HEAD", path, deadline=deadline,
                                     scope=_push_scope(repository))
            if response.status in (200, 404):
                return response.status == 200
            raise self.transport.failure(response, f"blob HEAD {self.transport.base_url}{path}",
                                         deadline)

    def push_blob(self, repository: str, digest: str, path: Path | None,
                  mount_from: str | None = None, chunk_size: int = UPLOAD_CHUNK,
                  progress: Callable[[int], None] | None = None) -> str:
        """Put the blob into ``repository``: a cross-repository mount from ``mount_from`` when
        the registry allows it, else an upload of the file at ``path`` (monolithic, or in
        chunks of ``chunk_size`` when larger; ``progress``: called with the bytes each part
        took up). Returns how ("mounted", "uploaded", "uploaded in chunks", or "not
        mounted" when there was no file to upload)."""
        progress = progress or (lambda _: None)
        with self.transport.redacting():
            size = path.stat().st_size if path else 0
            deadline = Deadline(self.transport.budget + size / UPLOAD_FLOOR_BYTES_PER_SECOND)
            start = f"/v2/{repository}/blobs/uploads/"
            scope = _push_scope(repository)
            if mount_from and mount_from != repository:
                start += f"?mount={digest}&from={mount_from}"
                scope += f" repository:{mount_from}:pull"
            response = self.transport.request("blob upload POST", "POST", start, scope=scope,
                                     deadline=deadline)
            if response.status == 201:
                return "mounted"
            location = response.headers.get("Location", "")
            if response.status != 202 or not location:
                raise self.transport.failure(
                    response, f"blob upload POST {self.transport.base_url}{start}", deadline)
            if path is None:
                return "not mounted"
            url = urljoin(f"{self.transport.base_url}/", location)
            final = b""
            if size > chunk_size:  # PATCH chunk by chunk, then PUT the digest
                with path.open("rb") as handle:
                    start = 0
                    while chunk := handle.read(chunk_size):
                        response = self.transport.request(
                            "blob upload PATCH", "PATCH", url, scope=scope, deadline=deadline,
                            data=chunk, headers={
                                "Content-Type": "application/octet-stream",
                                "Content-Range": f"{start}-{start + len(chunk) - 1}"})
                        if response.status != 202 or not response.headers.get("Location"):
                            raise self.transport.failure(response, f"blob upload PATCH "
                                                f"{url.split('?')[0]}", deadline)
                        url = urljoin(f"{self.transport.base_url}/", response.headers["Location"])
                        start += len(chunk)
                        progress(len(chunk))
            else:
                final = path.read_bytes()
            url += ("&" if "?" in url else "?") + f"digest={digest}"
            response = self.transport.request("blob upload PUT", "PUT", url, scope=scope,
                                     deadline=deadline, data=final, headers={
                                         "Content-Type": "application/octet-stream"})
            if response.status not in (201, 204):
                raise self.transport.failure(response, f"blob upload PUT {url.split('?')[0]}",
                                             deadline)
            progress(len(final))
            return "uploaded" if size <= chunk_size else "uploaded in chunks"

    def put_manifest(self, repository: str, reference: str, body: bytes,
                     media_type: str) -> str:
        """Store the manifest ``body`` as repository:reference; its digest."""
        with self.transport.redacting():
            deadline = Deadline(self.transport.budget)
            path = f"/v2/{repository}/manifests/{reference}"
            response = self.transport.request("manifest PUT", "PUT", path, deadline=deadline,
                                     scope=_push_scope(repository), data=body,
                                     headers={"Content-Type": media_type})
            what = f"manifest PUT {self.transport.base_url}{path}"
            if response.status not in (200, 201):
                raise self.transport.failure(response, what, deadline)
            digest = _content_digest(body)
            served = response.headers.get("Docker-Content-Digest", "").strip()
            said = f"answered Docker-Content-Digest {_shown(served)}"
            if not served:  # it does not say: what it now serves under the reference
                served = self._manifest_digest(repository, reference) or ""
                said = f"succeeded, but {reference} is then {_shown(served) or 'missing'}"
            if served != digest:
                raise StepError(f"{what} {said}, while the manifest sent has digest {digest}: "
                                "the registry did not store what was pushed",
                                source=self.transport.source, exit_code=1)
            return digest

    def _pull(self, method: str, kind: str, repository: str,
              reference: str) -> tuple[BaseHTTPResponse, str, Deadline]:
        """One pull-scoped request for /v2/<repository>/<kind>/<reference> (kind: manifests
        or blobs) under its own deadline: the answer, the URL and the deadline."""
        deadline = Deadline(self.transport.budget)
        path = f"/v2/{repository}/{kind}/{reference}"
        response = self.transport.request(f"{kind.removesuffix('s')} {method}", method, path,
                                 scope=f"repository:{repository}:pull", deadline=deadline)
        return response, f"{self.transport.base_url}{path}", deadline

    def _get_manifest(self, repository: str, reference: str) -> tuple[str, dict]:
        """The manifest under a tag, or under a digest (then checked against it)."""
        by_digest = ":" in reference  # a tag has no colon
        algorithm = self._check_digest(reference) if by_digest else "sha256"
        response, url, deadline = self._pull("GET", "manifests", repository, reference)
        if response.status == 404:
            raise StepError(f"{repository}:{reference} not found ({url})",
                            source=self.transport.source)
        if response.status != 200:
            raise self.transport.failure(response, f"manifest GET {url}", deadline)
        digest = _content_digest(response.data, algorithm)
        if by_digest:
            self._verify(f"manifest GET {url}", digest, reference)
        try:
            manifest = json.loads(response.data)
            if not isinstance(manifest, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise StepError(f"manifest GET {url} answered something that is not a manifest",
                            source=self.transport.source) from None
        return digest, manifest

    def _check_digest(self, digest: str) -> str:
        """``digest``'s algorithm, when it is a digest content can be checked against."""
        algorithm = digest.partition(":")[0]
        if not _DIGEST.fullmatch(digest) or algorithm not in _VERIFIABLE:
            raise StepError(f"{digest[:80]!r} is not a {' or '.join(_VERIFIABLE)} digest",
                            source=self.transport.source)
        return algorithm

    def _verify(self, what: str, served: str, wanted: str) -> None:
        """Refuse content fetched by digest that does not have that digest."""
        if served != wanted:
            raise StepError(f"{what} answered content whose digest is {served}, not the "
                            f"{wanted} asked for: refusing it", source=self.transport.source,
                            exit_code=1)

    def _blob(self, repository: str, digest: str, limit: int) -> bytes:
        algorithm = self._check_digest(digest)
        response, url, deadline = self._pull("GET", "blobs", repository, digest)
        if response.status != 200:
            raise self.transport.failure(response, f"blob GET {url}", deadline)
        if len(response.data) > limit:
            raise StepError(f"blob {digest} is over {limit} bytes", source=self.transport.source)
        self._verify(f"blob GET {url}", _content_digest(response.data, algorithm), digest)
        return response.data


def _push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _shown(digest: str) -> str:
    """A digest a registry sent, quoted unless it is one."""
    return digest if not digest or _DIGEST.fullmatch(digest) else repr(digest[:80])


def _content_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
