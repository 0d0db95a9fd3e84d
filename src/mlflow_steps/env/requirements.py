"""pip requirements: parse, follow includes inside the codeset, normalise."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from mlflow_steps.core.bounded import (
    file_sha256,
    quoted,
    read_env_text,
    relative_name,
    resolve_inside,
)
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import has_credentials

LOCAL_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")
VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")
FLAG_OPTIONS = {"--pre", "--prefer-binary", "--require-hashes", "--no-index"}
VALUE_OPTIONS = {"--only-binary", "--no-binary", "--trusted-host"}
VALUE_REQUIRED = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i",
                  "--index-url", "--extra-index-url", "-f", "--find-links"}
_COMMENT = re.compile(r"(^|\s+)#.*$")


@dataclass(frozen=True)
class LocalArtifact:
    """A wheel or sdist shipped inside the codeset and installed from the build context."""

    name: str
    sha256: str


@dataclass
class PipSpec:
    """Normalised pip input: requirements, constraints, index options, local artifacts."""

    requirements: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    index_url: str | None = None
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    local_artifacts: list[LocalArtifact] = field(default_factory=list)

    def canonical(self) -> dict[str, object]:
        """Order-independent, deduplicated form for hashing and rendering."""
        return {
            "requirements": sorted(set(self.requirements)),
            "constraints": sorted(set(self.constraints)),
            "index_url": self.index_url,
            "extra_index_urls": sorted(set(self.extra_index_urls)),
            "find_links": sorted(set(self.find_links)),
            "options": sorted(set(self.options)),
            "local_artifacts": sorted(
                {(a.name, a.sha256) for a in self.local_artifacts}
            ),
        }

    def names(self) -> set[str]:
        """Canonical project names of all requirements (not constraints)."""
        return {re.split(r"[\[<>=!~;@ ]", line, maxsplit=1)[0] for line in self.requirements}


PIP_ADVICE = "put them in pip config or PIP_INDEX_URL at build time instead of the codeset"


def reject_credentials(url: str, *, source: str, field: str, advice: str = PIP_ADVICE) -> str:
    """Refuse URLs carrying credentials (user:password@, a token as user, a credential query
    parameter such as ?access_token= or ?X-Amz-Signature=): they would reach the hash, the
    rendered files (an image layer) and logs. Credentials belong in pip config or env."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise StepError(f"{quoted(url)} is not a valid URL", source=source,
                        field=field) from None
    if parts.username or parts.password or "@" in parts.netloc or has_credentials(url):
        raise StepError(
            f"URL {quoted(host or '?')} embeds credentials; {advice}",
            source=source,
            field=field,
        )
    return url


def normalise_requirement(text: str, *, source: str, field: str) -> str:
    """One requirement in canonical form: name[extras]specifier @ url ; marker."""
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        first = str(exc).splitlines()[0]
        raise StepError(f"{quoted(text)} is not a valid requirement ({quoted(first)[1:-1]})",
                        source=source, field=field) from None
    out = canonicalize_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
    out += str(req.specifier)
    if req.url:
        if req.url.startswith(VCS_PREFIXES) or req.url.startswith("file:"):
            raise StepError(
                f"{quoted(req.name)} comes from {quoted(req.url)}; VCS and file URLs are not "
                "reproducible "
                "builds — pin a released version or ship a wheel in the codeset",
                source=source, field=field,
            )
        out += " @ " + reject_credentials(req.url, source=source, field=field)
    if req.marker:
        out += ("; " if req.url is None else " ; ") + str(req.marker)
    return out


def logical_lines(text: str) -> list[tuple[str, str]]:
    """Strip comments, join backslash continuations; return ('line N', content)."""
    result: list[tuple[str, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = _COMMENT.sub("", raw).strip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            result.append((f"line {start}", line))
    if pending.strip():
        result.append((f"line {start}", pending.strip()))
    return result


class RequirementsParser:
    """Collects a PipSpec from requirement lines and the files they include."""

    def __init__(self, codeset: Path) -> None:
        self.codeset = codeset
        self.spec = PipSpec()
        self.local_files: dict[str, Path] = {}
        self._visiting: list[Path] = []

    def parse_file(self, path: Path, *, constraint: bool = False) -> None:
        """Parse one requirements file (following -r/-c includes)."""
        name = relative_name(self.codeset, path)
        if path.resolve() in self._visiting:
            chain = " -> ".join(relative_name(self.codeset, p) for p in self._visiting)
            raise StepError(f"include cycle: {chain} -> {name}", source=name)
        self._visiting.append(path.resolve())
        try:
            self.parse_lines(logical_lines(read_env_text(self.codeset, path)), path.parent,
                             source=name, constraint=constraint)
        finally:
            self._visiting.pop()

    def parse_lines(self, lines: list[tuple[str, str]], base_dir: Path, *, source: str,
                    constraint: bool = False) -> None:
        """Parse (location, line) pairs whose relative paths start at ``base_dir``."""
        for where, line in lines:
            if line.startswith("-"):
                self._option(line, base_dir, source=source, where=where, constraint=constraint)
            else:
                self._requirement(line, base_dir, source=source, where=where,
                                  constraint=constraint)

    def _option(self, line: str, base_dir: Path, *, source: str, where: str,
                constraint: bool) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise StepError(f"cannot split {quoted(line)}: {exc}", source=source,
                            field=where) from None
        option, _, inline = words[0].partition("=")
        value = inline or (words[1] if len(words) > 1 else "")
        if not value and option in VALUE_REQUIRED:
            raise StepError(f"{quoted(option)} needs a value", source=source, field=where)
        if option in ("-r", "--requirement", "-c", "--constraint"):
            target = resolve_inside(self.codeset, base_dir, value, source=source, field=where)
            self.parse_file(target, constraint=constraint or option in ("-c", "--constraint"))
        elif option in ("-e", "--editable"):
            raise StepError(
                f"editable requirement {quoted(value)} cannot be built into an image; "
                "install the project normally or ship a wheel in the codeset",
                source=source, field=where,
            )
        elif option in ("-i", "--index-url"):
            self.spec.index_url = reject_credentials(value, source=source, field=where)
        elif option == "--extra-index-url":
            self.spec.extra_index_urls.append(reject_credentials(value, source=source,
                                                                 field=where))
        elif option in ("-f", "--find-links"):
            if "://" not in value:
                raise StepError(f"--find-links {quoted(value)} must be a URL; ship local wheels as "
                                "requirement lines instead", source=source, field=where)
            self.spec.find_links.append(reject_credentials(value, source=source, field=where))
        elif option in FLAG_OPTIONS:
            self.spec.options.append(option)
        elif option in VALUE_OPTIONS and value:
            self.spec.options.append(f"{option}={value}")
        else:
            raise StepError(f"unsupported pip option {quoted(option)}", source=source,
                            field=where)

    def _requirement(self, line: str, base_dir: Path, *, source: str, where: str,
                     constraint: bool) -> None:
        head, *hashes = line.split(" --hash")
        head = head.strip()
        if head.startswith(VCS_PREFIXES) or head.startswith(("http://", "https://")):
            raise StepError(
                f"{quoted(head)} is a bare URL; write it as 'name @ URL' with a released archive",
                source=source, field=where,
            )
        is_path = head.startswith((".", "/")) or head.endswith(LOCAL_ARCHIVE_SUFFIXES)
        if is_path and "@" not in head:
            self._local_artifact(head, base_dir, source=source, where=where)
            return
        text = normalise_requirement(head, source=source, field=where)
        for item in sorted(h.strip().lstrip("=").strip() for h in hashes):
            text += f" --hash={item}"
        (self.spec.constraints if constraint else self.spec.requirements).append(text)

    def _local_artifact(self, reference: str, base_dir: Path, *, source: str,
                        where: str) -> None:
        path = resolve_inside(self.codeset, base_dir, reference, source=source, field=where)
        if path.is_dir():
            raise StepError(
                f"{quoted(reference)} is a local directory; build it into a wheel and ship the "
                ".whl",
                source=source, field=where,
            )
        if not path.is_file() or not path.name.endswith(LOCAL_ARCHIVE_SUFFIXES):
            raise StepError(f"{quoted(reference)} is not a wheel or sdist in the codeset",
                            source=source, field=where)
        self.local_files[path.name] = path
        self.spec.local_artifacts.append(LocalArtifact(path.name, file_sha256(path)))


def parse_requirements_file(codeset: Path, path: Path) -> RequirementsParser:
    """Parse a requirements.txt (and its includes) into a populated parser."""
    parser = RequirementsParser(codeset)
    parser.parse_file(path)
    return parser


def yaml_lines(items: list[str], field: str) -> list[tuple[str, str]]:
    """Requirement strings from a YAML list, labelled 'field[i]' for messages."""
    return [(f"{field}[{i}]", item.strip()) for i, item in enumerate(items) if item.strip()]
