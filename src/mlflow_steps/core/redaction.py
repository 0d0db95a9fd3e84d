"""The one redaction module: credentials masked in every line we print, record or export.

``redact`` masks, in any text: the user-info of URLs (``scheme://user:***@host``,
``scheme://***@host`` when only a token is given; ``user:***@host`` without a scheme, as pip
takes a ``--find-links`` or an index in some places), credential-like query parameters
(``?access_token=***``), ``Authorization`` header values, ``NAME=value`` pairs whose
name says credential (``*_TOKEN``, ``*PASSWORD*``, ...), and every known secret value
(in its plain, percent-encoded and percent-decoded forms). None of it can raise: on an
internal failure the whole text is replaced by the mask.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary words; they are not credentials
_NOT_SECRET_VARIABLES = frozenset({"PWD", "OLDPWD"})  # the shell's directories
_SWITCH_VALUES = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null"})

# A name is a credential's when one of its parts (split at ``_ - .`` and camelCase) ends
# in one of these, is one of the short words, or two parts make one (api key, access key).
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "pwd", "credential",
                    "credentials", "signature", "apikey", "authorization")
_SECRET_PARTS = frozenset({"sig", "auth", "key", "pat"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key")})
_NAME = r"[A-Za-z0-9_.-]+"
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#'\"<>]*)@")
# user:password@host without a scheme, where a word starts (not name:tag@sha256:... digests).
_BARE_USERINFO = re.compile(
    r"(?:^|(?<=[\s'\"=,;(<\[]))(?P<user>[^\s/?#'\"<>@:]+):(?P<password>[^\s/?#'\"<>@]+)@"
    r"(?![A-Za-z][A-Za-z0-9+._-]*:[0-9a-fA-F]{32,})(?=[A-Za-z0-9\[])")
_QUERY_PAIR = re.compile(rf"(?P<key>[?&;](?P<name>{_NAME})=)(?P<value>[^&#\s'\"<>]*)")
_AUTH_HEADER = re.compile(r"(?P<key>authorization\s*[:=]\s*(?:(?:basic|bearer|token)\s+)?)"
                          r"(?P<value>[^\s'\",]+)", re.IGNORECASE)
_NAMED_PAIR = re.compile(
    rf"(?P<key>(?<![\w.-])(?P<name>{_NAME})(?:=|[\"']\s*:\s*)[\"']?)(?P<value>[^\s'\",;&]+)")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """Whether a variable, field or parameter name says its value is a credential."""
    parts = [part.lower() for part in re.split(r"[_.\-]+", _CAMEL.sub("_", name)) if part]
    return (any(part.endswith(_SECRET_SUFFIXES) or part in _SECRET_PARTS for part in parts)
            or any(pair in _SECRET_PAIRS for pair in itertools.pairwise(parts)))


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of credential-named variables (long enough to be credentials; not switches
    such as ``true``, not the shell's working directories)."""
    return [value for name, value in environ.items()
            if name not in _NOT_SECRET_VARIABLES and is_secret_name(name)
            and len(value) >= _MIN_SECRET and value.lower() not in _SWITCH_VALUES]


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    kept = f"{user}:{MASK}" if colon and user else MASK
    return f"{match['scheme']}{kept}@"


def _mask_bare_userinfo(match: re.Match[str]) -> str:
    return f"{match['user']}:{MASK}@"


def _mask_value(match: re.Match[str]) -> str:
    return match["key"] + (MASK if match["value"] else "")


def _mask_named_value(match: re.Match[str]) -> str:
    return _mask_value(match) if is_secret_name(match["name"]) else match[0]


def _forms(secret: str) -> set[str]:
    return {form for form in (secret, quote(secret, safe=""), quote(secret), unquote(secret))
            if len(form) >= _MIN_SECRET}


def _redact(text: str, secrets: Iterable[str]) -> str:
    known = {form for secret in secrets if secret and len(secret) >= _MIN_SECRET
             for form in _forms(secret)}
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _BARE_USERINFO.sub(_mask_bare_userinfo, text)
    text = _QUERY_PAIR.sub(_mask_named_value, text)
    text = _AUTH_HEADER.sub(_mask_value, text)
    return _NAMED_PAIR.sub(_mask_named_value, text)


def redact(text: object, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential masked; never raises."""
    try:
        return _redact(str(text), secrets)
    except Exception:  # masking must not be the thing that leaks
        return MASK


def has_credentials(text: str) -> bool:
    """Whether ``text`` (a URL, a requirement line, a value) carries a credential."""
    return redact(text) != text


class Redactor:
    """``redact`` with a growing set of known secret values (step inputs, env, registry)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets |= {value for value in secrets if value}

    def __call__(self, text: object) -> str:
        return redact(text, self._secrets)

    def mapping(self, values: Mapping[str, str]) -> dict[str, str]:
        return {key: self(value) for key, value in values.items()}
