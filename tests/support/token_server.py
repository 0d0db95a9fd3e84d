"""A small OAuth2-style token endpoint for registry bearer auth (docker distribution).

Issues RS256 JWTs with an x5c header whose certificate the registry trusts
(``auth.token.rootcertbundle``). Checks Basic credentials and refresh tokens.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from support.http_server import LoopbackServer

ISSUER = "mlflow-steps-test-issuer"
SERVICE = "mlflow-steps-test-registry"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(LoopbackServer):
    """Serves GET/POST /token on 127.0.0.1; records requests."""

    protocol = "HTTP/1.0"  # its answers carry no Content-Length

    def __init__(self, directory: Path, users: dict[str, str], refresh_tokens: set[str]):
        self.users = users
        self.refresh_tokens = refresh_tokens
        self.requests: list[dict] = []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.bundle = directory / "token-signer.crt"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        super().__init__()

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def issue(self, subject: str, scope: str | list[str]) -> str:
        access = []
        for one in [scope] if isinstance(scope, str) else scope:
            if one:
                kind, name, actions = one.split(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(
                      serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}." \
                        f"{b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if handler.command == "GET":  # Basic credentials
            query = parse_qs(urlsplit(handler.path).query)
            params = {k: v[0] for k, v in query.items()}
            params["scopes"] = query.get("scope", [])
            subject = None
            header = handler.headers.get("Authorization", "")
            if header.startswith("Basic "):
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if self.users.get(user) == password:
                    subject = user
            self._answer(handler, params, subject)
        elif handler.command == "POST":  # a refresh token
            form = parse_qs(body.decode())
            params = {k: v[0] for k, v in form.items()}
            params["scopes"] = form.get("scope", [])
            ok = (params.get("grant_type") == "refresh_token"
                  and params.get("refresh_token") in self.refresh_tokens)
            self._answer(handler, {k: v for k, v in params.items() if k != "refresh_token"},
                         "token-user" if ok else None)
        else:
            handler.send_error(501)

    def _answer(self, handler: BaseHTTPRequestHandler, params: dict[str, str],
                subject: str | None) -> None:
        self.requests.append({"method": handler.command, **params, "subject": subject})
        if subject is None:
            handler.send_response(401)
            handler.end_headers()
            return
        body = json.dumps({"token": self.issue(subject, params.get("scopes", []))})
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        handler.wfile.write(body.encode())
