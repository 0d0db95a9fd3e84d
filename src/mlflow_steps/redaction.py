"""The one redaction module: credentials masked in every line we print, record or export.

``redact`` masks, in any text: the user-info of URLs (``scheme://user:***@host``,
``scheme://***@host`` when only a token is given), credential-like query parameters
(``?access_token=***``), ``Authorization`` header values, ``NAME=value`` pairs whose
name says credential (``*_TOKEN``, ``*PASSWORD*``, ...), and every known secret value
(in its plain, percent-encoded and percent-decoded forms). None of it can raise: on an
internal failure the whole text is replaced by the mask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary words; they are not credentials

_CREDENTIAL_WORD = r"(?:token|secret|passw(?:or)?d|pwd|credential|signature|sig|api[-_]?key|" \
                   r"access[-_]?key|private[-_]?key|auth)"
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#'\"<>]*)@")
_QUERY_CREDENTIAL = re.compile(
    rf"(?P<key>[?&;][\w.-]*{_CREDENTIAL_WORD}[\w.-]*=)(?P<value>[^&#\s'\"<>]*)", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"(?P<key>authorization\s*[:=]\s*(?:(?:basic|bearer|token)\s+)?)"
                          r"(?P<value>[^\s'\",]+)", re.IGNORECASE)
_NAMED_CREDENTIAL = re.compile(
    rf"(?P<key>\b[\w.-]*{_CREDENTIAL_WORD}[\w.-]*(?:=|[\"']\s*:\s*)[\"']?)(?P<value>[^\s'\",;&]+)",
    re.IGNORECASE)
_SECRET_NAME = re.compile(rf"{_CREDENTIAL_WORD}|_KEY$|^KEY$", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a variable or field name says its value is a credential."""
    return bool(_SECRET_NAME.search(name))


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of credential-named variables (long enough to be credentials)."""
    return [value for name, value in environ.items()
            if is_secret_name(name) and len(value) >= _MIN_SECRET]


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    kept = f"{user}:{MASK}" if colon and user else MASK
    return f"{match['scheme']}{kept}@"


def _mask_value(match: re.Match[str]) -> str:
    return match["key"] + (MASK if match["value"] else "")


def _forms(secret: str) -> set[str]:
    return {form for form in (secret, quote(secret, safe=""), quote(secret), unquote(secret))
            if len(form) >= _MIN_SECRET}


def _redact(text: str, secrets: Iterable[str]) -> str:
    known = {form for secret in secrets if secret and len(secret) >= _MIN_SECRET
             for form in _forms(secret)}
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _QUERY_CREDENTIAL.sub(_mask_value, text)
    text = _AUTH_HEADER.sub(_mask_value, text)
    return _NAMED_CREDENTIAL.sub(_mask_value, text)


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
