"""Build-time pip configuration (mirrors, trusted hosts, CA bundle): what it says.

It is read from pip's own config files and ``PIP_*`` variables of the builder's
environment, overridden by step inputs. How it reaches a build (secret files, never a build
arg, a layer or a log line) is :mod:`mlflow_steps.env.pip_secrets`.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact
from mlflow_steps.env.spec import strip_credentials

CONFIG_SECTIONS = ("global", "install")
SETTINGS = ("index-url", "extra-index-url", "trusted-host", "cert")


def pip_config_files(environ: dict[str, str]) -> list[Path]:
    """pip's config files in increasing priority (site config is not used by builds)."""
    if environ.get("PIP_CONFIG_FILE") == os.devnull:
        return []
    home = Path(environ.get("HOME", str(Path.home())))
    xdg = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg)] + [Path("/etc/pip.conf")]
    files += [home / ".pip" / "pip.conf",
              Path(environ.get("XDG_CONFIG_HOME", str(home / ".config"))) / "pip" / "pip.conf"]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return files


def _reachable_urls(value: str) -> list[str]:
    """http(s) URLs only: file:// indexes and local paths do not exist inside a build."""
    return [url for url in value.split() if url.startswith(("http://", "https://"))]


@dataclass(frozen=True)
class BuildPipConfig:
    """What pip inside the build needs to reach its index."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    skipped: tuple[str, ...] = field(default=(), compare=False)

    @property
    def empty(self) -> bool:
        return not (self.index_url or self.extra_index_urls or self.trusted_hosts
                    or self.ca_bundle)

    def public_urls(self) -> tuple[str | None, tuple[str, ...]]:
        """Index URLs without credentials (what the environment hash may see)."""
        return (strip_credentials(self.index_url) if self.index_url else None,
                tuple(strip_credentials(u) for u in self.extra_index_urls))

    def describe(self) -> str:
        """One safe line for logs: hosts and CA path, never credentials."""
        index, extras = self.public_urls()
        parts = [f"index={index or 'default'}"]
        if extras:
            parts.append(f"extra={','.join(extras)}")
        if self.ca_bundle:
            parts.append(f"ca={self.ca_bundle}")
        if self.skipped:
            parts.append("skipped local=" + ",".join(strip_credentials(s) for s in self.skipped))
        return "pip config forwarded: " + " ".join(parts)


def _check_url(url: str, source: str, key: str) -> None:
    """One redacted line for an index URL pip could not use (a bad port, a bad host)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
        if not parts.hostname:
            raise ValueError("no host")
    except ValueError as exc:
        raise StepError(f"'{redact(url)}' is not a usable index URL ({exc})", source=source,
                        field=key) from None


def collect_pip_config(environ: dict[str, str], *, index_url: str | None = None,
                       extra_index_urls: tuple[str, ...] = (),
                       trusted_hosts: tuple[str, ...] = (),
                       ca_bundle: str | None = None,
                       config_files: list[Path] | None = None) -> BuildPipConfig:
    """Merge pip config files, PIP_* variables and explicit inputs (highest wins)."""
    values: dict[str, str] = {}
    origins: dict[str, str] = {}  # key → where its value came from, for error lines
    files = pip_config_files(environ) if config_files is None else config_files
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (configparser.Error, UnicodeDecodeError) as exc:
            reason = getattr(exc, "message", str(exc)).splitlines()[0]
            raise StepError(f"unreadable pip config ({redact(reason)})",
                            source=str(path)) from None
        for section in CONFIG_SECTIONS:
            if parser.has_section(section):
                found = {k: v for k, v in parser.items(section) if k in SETTINGS}
                values.update(found)
                origins.update(dict.fromkeys(found, str(path)))
    for key in SETTINGS:
        variable = "PIP_" + key.upper().replace("-", "_")
        if environ.get(variable):
            values[key] = environ[variable]
            origins[key] = variable
    explicit = {"index-url": index_url, "extra-index-url": " ".join(extra_index_urls),
                "trusted-host": " ".join(trusted_hosts), "cert": ca_bundle}
    values.update({k: v for k, v in explicit.items() if v})
    origins.update({k: "input" for k, v in explicit.items() if v})
    for key in ("index-url", "extra-index-url"):
        for url in _reachable_urls(values.get(key, "")):
            _check_url(url, origins[key], key)

    index = _reachable_urls(values.get("index-url", ""))
    extras_raw = values.get("extra-index-url", "")
    extras = _reachable_urls(extras_raw)
    skipped = tuple(u for u in extras_raw.split() + values.get("index-url", "").split()
                    if u not in extras and u not in index)
    cert = values.get("cert")
    if cert and not Path(cert).is_file():
        raise StepError(f"CA bundle '{cert}' not found", source="pip config", field="cert")
    return BuildPipConfig(
        index_url=index[0] if index else None,
        extra_index_urls=tuple(extras),
        trusted_hosts=tuple(values.get("trusted-host", "").split()),
        ca_bundle=Path(cert) if cert else None,
        skipped=skipped,
    )
