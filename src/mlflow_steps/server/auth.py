"""Token gate: ASGI middleware requiring ``Authorization: Bearer <token>`` on every request.

MLflow clients send that header when ``MLFLOW_TRACKING_TOKEN`` is set on their side. Only the
health endpoint stays open, for probes. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/health"})
CHALLENGE = b'Bearer realm="mlflow"'
_BODY = json.dumps({"error_code": "UNAUTHENTICATED",
                    "message": "a valid 'Authorization: Bearer <token>' header is required"}
                   ).encode()


class TokenGate:
    """Wraps an ASGI app; requests without the right bearer token get 401."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        if not token:
            raise ValueError("the token gate needs a non-empty token")
        self.app = app
        self._token = token.encode()
        self._open_paths = open_paths

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether ``headers`` carry ``Authorization: Bearer <token>`` (scheme case-insensitive)."""
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, credentials = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self._token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self._open_paths \
                or self.authorized(scope["headers"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", CHALLENGE),
                (b"content-length", str(len(_BODY)).encode())]})
            await send({"type": "http.response.body", "body": _BODY})
