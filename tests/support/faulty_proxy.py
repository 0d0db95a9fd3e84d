"""Faulty loopback servers (127.0.0.1 only, every wait bounded, stopped by the tests).

FaultyProxy: an HTTP proxy in front of a real registry that fails the first N requests.
ScriptedServer: an HTTP server whose every request a test function answers.
SilentServer: a port that accepts TCP and never answers, or never completes a connect.
TlsSniffer: plain HTTP relayed to a real registry; TLS handshakes fail in a chosen way.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import requests

from support.http_server import HOLD_SECONDS, LoopbackServer

# Not relayed: hop-by-hop headers, and the encoding requests has already undone.
HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "content-length",
               "content-encoding"}


def forward(handler: BaseHTTPRequestHandler, target: str, body: bytes = b"",
            timeout: float = 10) -> None:
    """Relay ``handler``'s request (with ``body``) to ``target`` and the answer back."""
    headers = {k: v for k, v in handler.headers.items()
               if k.lower() not in ("host", *HOP_HEADERS)}
    upstream = requests.request(handler.command, target + handler.path, data=body or None,
                                headers=headers, timeout=timeout)
    handler.send_response(upstream.status_code)
    for key, value in upstream.headers.items():
        if key.lower() not in HOP_HEADERS:
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(upstream.content)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(upstream.content)


class FaultyProxy(LoopbackServer):
    """Answers ``status`` (with ``headers``) to the first ``failures`` requests, then
    forwards to ``target``."""

    protocol = "HTTP/1.0"

    def __init__(self, target: str, failures: int, status: int = 500,
                 headers: dict[str, str] | None = None) -> None:
        self.target = target
        self.failures = failures
        self.status = status
        self.headers = dict(headers or {})
        self.seen = 0
        super().__init__()

    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        self.seen += 1
        if self.seen <= self.failures:
            handler.send_response(self.status)
            for key, value in self.headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        forward(handler, self.target, body)


Script = Callable[["ScriptedServer", BaseHTTPRequestHandler], None]


class ScriptedServer(LoopbackServer):
    """Every request is answered by ``script(server, handler)`` (its body in
    ``handler.body``); ``requests`` records (method, path, headers). ``answer`` writes a
    response; ``hold`` never answers."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        super().__init__()

    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        handler.body = body  # type: ignore[attr-defined]
        self.requests.append((handler.command, handler.path, dict(handler.headers)))
        self.script(self, handler)

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, status: int, body: bytes | str = b"",
               headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def hold(self, handler: BaseHTTPRequestHandler) -> None:
        """Keep the connection open without answering (until stop)."""
        self.released.wait(HOLD_SECONDS)
        handler.close_connection = True


class SilentServer:
    """A loopback port that never answers. ``accept``: connections are accepted and held
    (reads time out). ``blackhole``: the accept queue is full, so a connect never completes
    (connect times out) -- ``works`` says whether this kernel drops the SYNs."""

    def __init__(self, mode: str = "accept") -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        self.works = True
        if mode == "accept":
            self.sock.listen(16)
            threading.Thread(target=self._accept, daemon=True).start()
        else:
            self.sock.listen(0)
            self.works = self._fill_backlog()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def _fill_backlog(self) -> bool:
        for _ in range(8):
            filler = socket.socket()
            filler.settimeout(0.5)
            try:
                filler.connect(self.sock.getsockname())
            except OSError:
                filler.close()
                return True  # this connect did not complete: the next ones will not either
            self.held.append(filler)
        return False

    def stop(self) -> None:
        self.stopped.set()
        for conn in self.held:
            conn.close()
        self.sock.close()


TLS_MODES = ("untrusted-certificate", "handshake-alert", "garbage", "close")
_ALERT_HANDSHAKE_FAILURE = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])


class TlsSniffer:
    """One port, two behaviours: a connection opening with a TLS handshake fails in the way
    ``tls_mode`` says (a certificate no client trusts, a handshake_failure alert, a reply
    that is not TLS, a close); any other connection is relayed to ``target`` (a plain
    HTTP registry), so a client that falls back to plain HTTP gets real answers."""

    def __init__(self, target_address: str, tls_mode: str, directory: Path) -> None:
        assert tls_mode in TLS_MODES, tls_mode
        host, port = target_address.rsplit(":", 1)
        self.target = (host, int(port))
        self.tls_mode = tls_mode
        self.handshakes = 0
        self.context = _untrusted_context(directory)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
            if first == b"\x16":
                self.handshakes += 1
                self._fail_tls(conn)
            elif first:
                self._relay(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def _fail_tls(self, conn: socket.socket) -> None:
        if self.tls_mode == "untrusted-certificate":
            tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            with tls, contextlib.suppress(ssl.SSLError, OSError):
                tls.do_handshake()  # the client refuses the certificate
            return
        _drain(conn)
        if self.tls_mode == "handshake-alert":
            conn.sendall(_ALERT_HANDSHAKE_FAILURE)
        elif self.tls_mode == "garbage":
            conn.sendall(b"SSH-2.0-OpenSSH_9.6 not a TLS server\r\n")
        conn.shutdown(socket.SHUT_WR)
        _drain(conn)

    def _relay(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(self.target, timeout=10)
        self.open.append(upstream)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join(10)
        upstream.close()

    def stop(self) -> None:
        self.stopped.set()
        for conn in self.open:
            conn.close()
        self.sock.close()


def _drain(conn: socket.socket) -> None:
    """Read what the client sent (a ClientHello), so closing sends FIN, not RST."""
    conn.settimeout(0.3)
    deadline = time.monotonic() + 2
    try:
        while time.monotonic() < deadline and conn.recv(65536):
            pass
    except OSError:
        pass


def _untrusted_context(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "untrusted 127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "untrusted.crt", directory / "untrusted.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context
