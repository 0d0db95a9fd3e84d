"""What a staged environment holds, read from its distributions' metadata alone (dist-info
METADATA and direct_url.json): nothing of the environment is imported or run, so a package's
``.pth`` file or import hook never runs on the build host. The SBOM is the CycloneDX JSON that
``cyclonedx-py environment`` writes in the Dockerfile path, made with the library it uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib.metadata import Distribution, PackageMetadata, PathDistribution
from pathlib import Path

from cyclonedx.builder.this import this_component
from cyclonedx.exception.model import InvalidUriException, UnknownHashTypeException
from cyclonedx.factory.license import LicenseFactory
from cyclonedx.model import ExternalReference, ExternalReferenceType, HashType, Property, XsUri
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import License, LicenseAcknowledgement, LicenseExpression
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from mlflow_steps import __version__

# Project-URL labels cyclonedx-py maps to a reference type (the rest are "other").
_URL_LABELS = {
    "bugtracker": ExternalReferenceType.ISSUE_TRACKER,
    "issuetracker": ExternalReferenceType.ISSUE_TRACKER,
    "issues": ExternalReferenceType.ISSUE_TRACKER,
    "bugreports": ExternalReferenceType.ISSUE_TRACKER,
    "tracker": ExternalReferenceType.ISSUE_TRACKER, "home": ExternalReferenceType.WEBSITE,
    "homepage": ExternalReferenceType.WEBSITE, "download": ExternalReferenceType.DISTRIBUTION,
    "documentation": ExternalReferenceType.DOCUMENTATION,
    "docs": ExternalReferenceType.DOCUMENTATION, "changelog": ExternalReferenceType.RELEASE_NOTES,
    "changes": ExternalReferenceType.RELEASE_NOTES, "repository": ExternalReferenceType.VCS,
    "github": ExternalReferenceType.VCS, "chat": ExternalReferenceType.CHAT}
_LICENSE_CLASSIFIER = "License :: "


def distributions(site: Path) -> list[Distribution]:
    """The distributions installed in ``site`` (a site-packages directory), by name."""
    found = [PathDistribution(info) for info in site.glob("*.dist-info") if info.is_dir()]
    return sorted(found, key=lambda d: canonicalize_name(d.metadata["Name"] or ""))


def unmet_requirements(dists: list[Distribution], markers: Mapping[str, str]) -> list[str]:
    """What ``uv pip check`` reports: each requirement (with the extras asked for) that no
    installed distribution satisfies, markers evaluated for ``markers`` (the image's)."""
    installed = {canonicalize_name(d.metadata["Name"] or ""): d for d in dists}
    pending = [(d, "") for d in dists]
    seen: set[tuple[str, str]] = set()
    problems = []
    while pending:
        dist, extra = pending.pop()
        name = dist.metadata["Name"] or "?"
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for line in dist.requires or ():
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                problems.append(f"{name} has an invalid requirement {line!r}")
                continue
            if requirement.marker and not requirement.marker.evaluate({**markers,
                                                                        "extra": extra}):
                continue
            found = installed.get(canonicalize_name(requirement.name))
            version = found.metadata["Version"] if found else None
            if found is None:
                problems.append(f"{name} requires {requirement}, which is not installed")
            elif not requirement.specifier.contains(version or "", prereleases=True):
                problems.append(f"{name} requires {requirement}, but {version} is installed")
            else:
                pending.extend((found, e) for e in sorted(requirement.extras))
    return sorted(problems)


def sbom_json(dists: list[Distribution], timestamp: int) -> str:
    """CycloneDX 1.6 JSON of ``dists`` as ``cyclonedx-py environment --output-reproducible``
    writes it (no serial number; ``timestamp``, the build's SOURCE_DATE_EPOCH)."""
    bom = Bom()
    bom.metadata.tools.components.update((this_component(), Component(
        type=ComponentType.APPLICATION, name="mlflow-steps", version=__version__,
        description="SBOM of the staged environment, from its distributions' metadata")))
    bom.metadata.properties.add(Property(name="cdx:reproducible", value="true"))
    bom.serial_number = None  # type: ignore[assignment]  # reproducible, as cyclonedx-py's
    bom.metadata.timestamp = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    components: dict[str, tuple[Component, tuple[str, ...]]] = {}
    for dist in dists:
        component = _component(dist)
        components[canonicalize_name(component.name)] = (component, tuple(dist.requires or ()))
        bom.components.add(component)
    for component, requires in components.values():
        needs = []
        for line in requires:
            try:
                needed = components.get(canonicalize_name(Requirement(line).name))
            except InvalidRequirement:
                continue
            if needed and needed[0] is not component:
                needs.append(needed[0])
        bom.register_dependency(component, needs)
    return make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string(indent=2)


def _component(dist: Distribution) -> Component:
    meta = dist.metadata
    name, version = meta["Name"] or "", meta["Version"] or ""
    component = Component(type=ComponentType.LIBRARY, bom_ref=f"{name}=={version}", name=name,
                          version=version, description=meta["Summary"] or None,
                          external_references=list(_references(meta)))
    licenses = list(_licenses(meta))
    expression = next((x for x in licenses if isinstance(x, LicenseExpression)), None)
    component.licenses.update([expression] if expression else licenses)
    source = _direct_url(dist)
    if source is not None:
        component.external_references.add(source)
    if source is None or not str(source.url).startswith("file://"):
        qualifiers = {"download_url": str(source.url)} if source else {}
        component.purl = PackageURL(type="pypi", name=name, version=version,
                                    qualifiers=qualifiers)
    return component


def _licenses(meta: PackageMetadata) -> Iterator[License]:
    factory, declared = LicenseFactory(), LicenseAcknowledgement.DECLARED
    if meta["License-Expression"]:
        yield factory.make_from_string(meta["License-Expression"],
                                       license_acknowledgement=declared)
        return
    for classifier in meta.get_all("Classifier") or ():
        if classifier.startswith(_LICENSE_CLASSIFIER):
            yield factory.make_from_string(classifier, license_acknowledgement=declared)
    for text in sorted(set(meta.get_all("License") or ())):
        license = factory.make_from_string(text, license_acknowledgement=declared)
        if getattr(license, "id", None) or isinstance(license, LicenseExpression):
            yield license  # a license's full text is no name: left out, as cyclonedx-py does


def _references(meta: PackageMetadata) -> Iterator[ExternalReference]:
    fields = [(f"from packaging metadata: {key}", kind, meta[key])
              for key, kind in (("Home-page", ExternalReferenceType.WEBSITE),
                                ("Download-URL", ExternalReferenceType.DISTRIBUTION))
              if meta[key]]
    for value in meta.get_all("Project-URL") or ():
        label, _, url = value.partition(",")
        kind = _URL_LABELS.get(re.sub("[^a-z]", "", label.lower()), ExternalReferenceType.OTHER)
        fields.append((f"from packaging metadata Project-URL: {label}", kind, url.strip()))
    for comment, kind, url in fields:
        try:
            yield ExternalReference(type=kind, url=XsUri(url), comment=comment)
        except InvalidUriException:
            continue


def _direct_url(dist: Distribution) -> ExternalReference | None:
    """Where a distribution installed from a URL came from (PEP 610)."""
    try:
        data = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
        return None
    url, hashes = data["url"], {}
    if isinstance(data.get("vcs_info"), dict):
        info = data["vcs_info"]
        kind, url = ExternalReferenceType.VCS, f"{url}#{info.get('commit_id', '')}"
        comment = f"PackageSource: VCS {info.get('vcs')!r}"
    elif "archive_info" in data:
        kind, comment = ExternalReferenceType.DISTRIBUTION, "PackageSource: Archive"
        hashes = (data["archive_info"] or {}).get("hashes") or {}
    else:
        kind, comment = ExternalReferenceType.DISTRIBUTION, "PackageSource: Local"
    try:
        return ExternalReference(type=kind, url=XsUri(url), comment=comment,
                                 hashes=list(_hashes(hashes)))
    except InvalidUriException:
        return None



def _hashes(hashes: object) -> Iterator[HashType]:
    for algorithm, value in (hashes.items() if isinstance(hashes, dict) else ()):
        try:
            yield HashType.from_hashlib_alg(str(algorithm), str(value))
        except UnknownHashTypeException:
            continue
