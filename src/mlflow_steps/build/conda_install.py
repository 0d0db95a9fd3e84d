"""Conda environments without conda: solve (or take the lock), fetch and install with rattler.

The environment is installed into the build context as if it were the image's ``/opt/env``
(paths, shebangs and prefix placeholders name ``/opt/env``); the Dockerfile only copies it.
So no backend (Docker, Buildah, Kaniko) and no base image needs conda, and the channel
configuration (alias, credentials) stays on the builder: never in a layer, a log or the tag.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cyclonedx.factory.license import LicenseFactory
from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    XsUri,
)
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import LicenseAcknowledgement
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

from mlflow_steps.build import conda_record
from mlflow_steps.build.image_plan import EnvironmentInstall
from mlflow_steps.core.bounded import MAX_FILE_BYTES, file_digest, read_bounded_text
from mlflow_steps.core.cache import (
    cache_root,
    entry_lock,
    temporary_beside,
    users_temp_directory,
)
from mlflow_steps.core.deadline import Deadline
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import private_directory
from mlflow_steps.core.rattler import run_rattler
from mlflow_steps.core.redaction import redact
from mlflow_steps.core.retry import (
    BUDGET_VARIABLE,
    RetryingHttp,
    is_timeout,
    network_budget,
)
from mlflow_steps.core.yaml_file import load_yaml_text
from mlflow_steps.env.spec import strip_credentials
from mlflow_steps.image.platforms import DEFAULT_PLATFORMS, conda_subdir, machine

DEFAULT_CHANNEL_ALIAS = "https://conda.anaconda.org/"
DEFAULT_CHANNELS = ("conda-forge",)
ALIAS_VARIABLE = "CONDA_CHANNEL_ALIAS"  # conda's own variable
_CHUNK = 1 << 20
_TOKEN_PATH = re.compile(r"/t/[^/]+/")  # anaconda.org-style channel tokens


@dataclass(frozen=True)
class CondaChannels:
    """Where channel names resolve (may carry credentials: a secret, never hashed)."""

    alias: str = DEFAULT_CHANNEL_ALIAS
    source: str = "default"

    @classmethod
    def collect(cls, environ: Mapping[str, str], alias: str | None = None) -> CondaChannels:
        """The step input, else CONDA_CHANNEL_ALIAS, else ``channel_alias`` of the condarc."""
        if alias:
            return cls._checked(alias, "input: conda_channel_alias")
        if environ.get(ALIAS_VARIABLE):
            return cls._checked(environ[ALIAS_VARIABLE], ALIAS_VARIABLE)
        for path in _condarc_files(environ):
            if path.is_file():
                value = _condarc_alias(path)
                if value:
                    return cls._checked(value, f"{path}: channel_alias")
        return cls()

    @classmethod
    def _checked(cls, url: str, source: str) -> CondaChannels:
        try:
            parts = urlsplit(url.strip())
            ok = parts.scheme in ("http", "https", "file") and (parts.hostname or
                                                               parts.scheme == "file")
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            ok = False
        if not ok:
            raise StepError(f"'{redact(url)}' is not an http(s) or file URL", source=source)
        return cls(url.strip().rstrip("/") + "/", source)


def _condarc_files(environ: Mapping[str, str]) -> list[Path]:
    home = Path(environ.get("HOME", str(Path.home())))
    files = [Path(environ["CONDARC"])] if environ.get("CONDARC") else []
    return [*files, home / ".condarc", home / ".conda" / ".condarc"]


def _condarc_alias(path: Path) -> str | None:
    """``channel_alias`` of a condarc file (bounded read; empty or comments only: none)."""
    data = load_yaml_text(read_bounded_text(path, source=str(path), limit=MAX_FILE_BYTES,
                                            what="condarc files"), str(path))
    if data is not None and not isinstance(data, dict):
        raise StepError("expected a YAML mapping at the top level", source=str(path))
    value = (data or {}).get("channel_alias")
    if value is not None and not isinstance(value, str):
        raise StepError("expected a URL string", source=str(path), field="channel_alias")
    return value


def cache_dir(environ: Mapping[str, str]) -> Path:
    """Downloaded archives and rattler's caches, kept between builds (no cache directory to
    be made: this user's private one in the temp directory)."""
    path = cache_root(environ) / "conda"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = users_temp_directory("mlflow-steps-conda")
    return path


def solve(install: EnvironmentInstall, channels: CondaChannels, cache: Path,
          platform: str = DEFAULT_PLATFORMS[0]) -> list[dict[str, Any]]:
    """The packages of the conda.yaml's conda part, solved for ``platform``. rattler's
    repodata cache records the channel URLs: an alias with credentials gets a private cache
    of this solve only (removed after it), so they are not left on disk."""
    with contextlib.ExitStack() as stack:
        repodata = cache / "repodata" if _public_url(channels.alias) == channels.alias else \
            stack.enter_context(private_directory("mlflow-steps-repodata-"))
        return run_rattler("solve", {
            "channels": list(install.conda_channels or DEFAULT_CHANNELS),
            "subdir": conda_subdir(platform), "cpu": machine(platform),
            "specs": list(install.conda_dependencies),
            "alias": channels.alias, "cache": str(repodata)},
            source=install.source or "conda.yaml", secrets=[channels.alias])


def _archive_name(record: Mapping[str, Any]) -> str:
    name = record.get("file_name") or unquote(urlsplit(record["url"]).path.rsplit("/", 1)[-1])
    if not name.endswith((".conda", ".tar.bz2")) or "/" in name or name.startswith("."):
        raise StepError(f"'{redact(record['url'])}' is not a conda package URL",
                        field=f"package {record.get('name', '?')}")
    return name


def _check_digest(path: Path, record: Mapping[str, Any], source: str) -> bool:
    """Whether ``path`` has the record's sha256 (else md5); a record without either fails."""
    for algorithm in ("sha256", "md5"):
        expected = record.get(algorithm)
        if expected:
            return file_digest(path, algorithm) == expected.lower()
    raise StepError(f"package {record.get('name')} has no sha256 or md5 to check",
                    source=source)


def fetch(records: list[dict[str, Any]], cache: Path, environ: Mapping[str, str],
          source: str, secrets: list[str]) -> list[Path]:
    """Each record's archive, from the cache or its URL, checked against its hash."""
    archives = []
    http = RetryingHttp(environ=environ)
    budget = network_budget(environ)
    for record in records:
        name = _archive_name(record)
        digest = record.get("sha256") or record.get("md5")
        path = cache / "pkgs" / str(digest) / name
        if not (path.is_file() and _check_digest(path, record, source)):
            with entry_lock(path):  # another build fetching it meanwhile: wait for it
                if not (path.is_file() and _check_digest(path, record, source)):
                    _fetch_archive(record, path, http, budget, source, secrets)
        archives.append(path)
    return archives


def _fetch_archive(record: Mapping[str, Any], path: Path, http: RetryingHttp, budget: float,
                   source: str, secrets: list[str]) -> None:
    """Download the record's archive to a new file beside ``path`` and, once checked against
    its hash, move it onto ``path``."""
    partial = temporary_beside(path)
    try:
        _download(record["url"], partial, http, budget, secrets)
        if not _check_digest(partial, record, source):
            raise StepError(f"{path.name}: downloaded file does not match its "
                            f"{'sha256' if record.get('sha256') else 'md5'} "
                            f"({strip_credentials(record['url'])})", source=source)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _download(url: str, target: Path, http: RetryingHttp, budget: float,
              secrets: list[str]) -> None:
    parts = urlsplit(url)
    try:
        if parts.scheme == "file":
            shutil.copyfile(unquote(parts.path), target)
            return
        with http.request("GET", url, Deadline(budget), stream=True) as response:
            if response.status != 200:
                raise StepError(f"{redact(url, secrets)} answered HTTP {response.status}",
                                source="conda channel")
            with target.open("wb") as handle:
                for chunk in response.stream(_CHUNK):
                    handle.write(chunk)
    except StepError:
        raise
    except Exception as exc:  # urllib3/OS errors: one redacted line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if is_timeout(exc):
            first = f"no answer within {budget:g} s ({BUDGET_VARIABLE} sets the budget)"
        raise StepError(f"cannot fetch {redact(url, secrets)}: {redact(first, secrets)}",
                        source="conda channel") from None


def stage_environment(install: EnvironmentInstall, staging: Path, prefix: str,
                      channels: CondaChannels, environ: Mapping[str, str],
                      platform: str = DEFAULT_PLATFORMS[0]) -> list[dict[str, Any]]:
    """Install the plan's conda packages for ``platform`` into ``staging`` as ``prefix``;
    return the records."""
    cache = cache_dir(environ)
    source = install.source or "conda environment"
    secrets = [channels.alias]
    records = ([dict(record) for record in install.locked_conda]
               if install.strategy == "conda-lock" else solve(install, channels, cache, platform))
    archives = fetch(records, cache, environ, source, secrets)
    run_rattler("install", {"archives": [str(a) for a in archives], "staging": str(staging),
                            "subdir": conda_subdir(platform),
                            "prefix": prefix, "cache": str(cache / "extracted")},
                source=source, secrets=secrets)
    _scrub_metadata(staging, {archive.name: record["url"]
                              for archive, record in zip(archives, records, strict=True)})
    return records


def _public_url(url: str) -> str:
    return _TOKEN_PATH.sub("/", strip_credentials(url))


def _scrub_metadata(staging: Path, urls: Mapping[str, str]) -> None:
    """conda-meta names where each package came from (no credentials) and no builder path;
    no cache marker."""
    (staging / "CACHEDIR.TAG").unlink(missing_ok=True)
    for path in sorted((staging / "conda-meta").glob("*.json")):
        record = json.loads(path.read_text())
        record.pop("extracted_package_dir", None)
        record.pop("package_tarball_full_path", None)
        if isinstance(record.get("link"), dict):
            record["link"].pop("source", None)
        url = urls.get(record.get("fn", ""))
        if url:
            record["url"] = _public_url(url)
            record["channel"] = record["url"].rsplit("/", 2)[0]
        path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def write_conda_record(env: Path, out: Path) -> None:
    """What the image build adds to its lock and SBOM (``conda_record.merge``, copied to
    ``out`` as merge.py): every conda package installed in ``env`` (its conda-meta, as
    scrubbed), ``python`` and packages without Python in them included; in ``out``, the
    archive URL and sha256 of each (lock.txt) and their CycloneDX components, ``pkg:conda``
    purls, and dependencies (components.cdx.json)."""
    metas = [json.loads(path.read_text())
             for path in sorted((env / "conda-meta").glob("*.json"))]
    out.mkdir()
    (out / conda_record.LOCK).write_text(
        "# conda packages: each archive's URL and sha256\n"
        + "".join(f"{meta['url']}#sha256:{meta['sha256']}\n" for meta in metas))
    bom = Bom()
    components = {meta["name"]: _conda_component(meta) for meta in metas}
    bom.components.update(components.values())
    for meta in metas:
        needs = {spec.split()[0] for spec in meta.get("depends") or ()}
        bom.register_dependency(components[meta["name"]],
                                [components[name] for name in sorted(needs & components.keys())])
    document = json.loads(make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6)
                          .output_as_string())
    (out / conda_record.COMPONENTS).write_text(json.dumps(
        {key: document.get(key, []) for key in ("components", "dependencies")}, indent=2)
        + "\n")
    shutil.copyfile(conda_record.__file__, out / "merge.py")


def _conda_component(meta: Mapping[str, Any]) -> Component:
    """A conda package as a CycloneDX component (purl: the conda type's name, version,
    build, channel name, subdir and archive type)."""
    archive = "conda" if meta["fn"].endswith(".conda") else "tar.bz2"
    purl = PackageURL(type="conda", name=meta["name"], version=meta["version"], qualifiers={
        "build": meta["build"], "channel": meta["channel"].rstrip("/").rsplit("/", 1)[-1],
        "subdir": meta["subdir"], "type": archive})
    digest = HashType(alg=HashAlgorithm.SHA_256, content=meta["sha256"])
    component = Component(
        type=ComponentType.LIBRARY, bom_ref=purl.to_string(), name=meta["name"],
        version=meta["version"], purl=purl, hashes=[digest],
        external_references=[ExternalReference(
            type=ExternalReferenceType.DISTRIBUTION, url=XsUri(meta["url"]),
            comment="conda package archive", hashes=[digest])])
    if meta.get("license"):
        component.licenses.add(LicenseFactory().make_from_string(
            meta["license"], license_acknowledgement=LicenseAcknowledgement.DECLARED))
    return component
