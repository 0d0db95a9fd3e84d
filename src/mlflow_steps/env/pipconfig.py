"""Build-time pip configuration (mirrors, trusted hosts, CA bundle) forwarded into builds.

It is read from pip's own config files and ``PIP_*`` variables of the builder's
environment, overridden by step inputs, and handed to the engine as a secret file —
never as a build arg, a layer, or a log line.
"""

from __future__ import annotations

import configparser
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact
from mlflow_steps.env.spec import strip_credentials

CONFIG_SECTIONS = ("global", "install")
SETTINGS = ("index-url", "extra-index-url", "trusted-host", "cert")
UV_KEPT = ("UV_CACHE_DIR",)  # the host's uv settings that never change what is installed


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

    def pip_conf(self, ca_target: str | None) -> str:
        """pip.conf text for the build (may contain credentials: treat as a secret)."""
        lines = ["[global]"]
        if self.index_url:
            lines.append(f"index-url = {self.index_url}")
        if self.extra_index_urls:
            lines.append("extra-index-url = " + " ".join(self.extra_index_urls))
        if self.trusted_hosts:
            lines.append("trusted-host = " + " ".join(self.trusted_hosts))
        if self.ca_bundle and ca_target:
            lines.append(f"cert = {ca_target}")
        return "\n".join(lines) + "\n"

    def uv_settings(self, ca_target: str | None) -> dict[str, str]:
        """The same settings for uv, as environment variables (secrets too)."""
        values = {"UV_INDEX_URL": self.index_url or "",
                  "UV_EXTRA_INDEX_URL": " ".join(self.extra_index_urls),
                  "UV_INSECURE_HOST": " ".join(self.trusted_hosts),
                  "SSL_CERT_FILE": ca_target if self.ca_bundle and ca_target else ""}
        return {key: value for key, value in values.items() if value}

    def uv_process_settings(self) -> dict[str, str]:
        """``uv_settings`` for uv run here (the CA bundle where it is; secrets too)."""
        return self.uv_settings(str(self.ca_bundle) if self.ca_bundle else None)

    def uv_process_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` for running uv here: its own UV_* settings replaced by the forwarded
        ones (its cache directory kept: where files are kept does not change what is
        installed), no progress bars, no Python downloads."""
        env = {key: value for key, value in environ.items()
               if not key.startswith("UV_") or key in UV_KEPT}
        env.update(self.uv_process_settings(), UV_NO_PROGRESS="1", UV_PYTHON_DOWNLOADS="never")
        return env

    def uv_env(self, ca_target: str | None) -> str:
        """``uv_settings`` as a shell env file (a secret too)."""
        return "".join(f"{key}={shlex.quote(value)}\n"
                       for key, value in self.uv_settings(ca_target).items())

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
