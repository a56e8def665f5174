"""A recording HTTPS reverse proxy in front of a real API server.

The operator processes under test connect to it instead of the API server, with their own
ServiceAccount tokens; it forwards every request unchanged (method, path, query, headers,
body) and streams every answer back unchanged (watches included), and records the status
code of each answer per account. The API server still authenticates and authorizes every
request: the proxy only lets a test assert that a process never got a 401 or 403 (a 1.20
API server counts no denied requests in its metrics, and logs are not an interface).

It serves TLS with a throwaway self-signed certificate for 127.0.0.1, so the clients under
test still load a CA from their kubeconfig and verify the server, as they would in a cluster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import http.server
import ipaddress
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass(frozen=True, slots=True)
class Answer:
    who: str       # the account the request's token belongs to ("unknown" otherwise)
    method: str
    path: str
    status: int


def self_signed(home: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "statehold-test-proxy")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = home / "proxy.crt", home / "proxy.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


class RecordingProxy:
    """``start()`` -> the proxy's URL; ``answers`` grows with every forwarded answer."""

    def __init__(self, upstream: str, upstream_ca: Path, accounts: dict[str, str],
                 home: Path) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.upstream_tls = ssl.create_default_context(cafile=str(upstream_ca))
        self.accounts = accounts  # bearer token -> account name
        self.ca, key = self_signed(home)
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPSConnection] = set()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.ca, key)
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-proxy",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and cut every upstream connection still open (watches)."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            doomed = list(self._open)
        for conn in doomed:
            # shutdown, not close: close would wait for the TLS object a handler thread
            # is blocked reading from; shutdown wakes that read, and the handler closes it
            with contextlib.suppress(OSError, AttributeError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)

    def refused(self) -> list[Answer]:
        """Every answer that denied a request: 401 (who?) or 403 (not allowed)."""
        with self._lock:
            return [a for a in self.answers if a.status in (401, 403)]

    def errors(self) -> list[Answer]:
        """Every answer that is an error other than 404 (a read of something not there yet)
        and 409 (a lost race, retried): refusals, invalid writes (400, 422), server errors."""
        with self._lock:
            return [a for a in self.answers if a.status >= 400 and a.status not in (404, 409)]

    def watches(self, who: str) -> set[str]:
        """The collections ``who`` opened a watch on (their paths, without the query)."""
        with self._lock:
            return {a.path.partition("?")[0] for a in self.answers
                    if a.who == who and a.method == "GET" and "watch=true" in a.path}

    def seen(self, who: str) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a.who == who)

    # -- used by the handler ----------------------------------------------------------------
    def connect(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.upstream.hostname or "127.0.0.1",
                                           self.upstream.port or 443,
                                           context=self.upstream_tls, timeout=600)
        with self._lock:
            self._open.add(conn)
        return conn

    def forget(self, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            self._open.discard(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)


def _handler_for(proxy: RecordingProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked answers, as the clients expect
        upstream: http.client.HTTPSConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            who = proxy.accounts.get(token, "unknown")
            if self.upstream is None:
                self.upstream = proxy.connect()
            try:
                self.upstream.request(self.command, self.path, body=body, headers=headers)
                resp = self.upstream.getresponse()
            except (OSError, http.client.HTTPException):
                # a stale keep-alive connection to the API server: once more on a fresh one
                proxy.forget(self.upstream)
                self.upstream = proxy.connect()
                self.upstream.request(self.command, self.path, body=body, headers=headers)
                resp = self.upstream.getresponse()
            proxy.record(Answer(who, self.command, self.path, resp.status))
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            size = resp.getheader("Content-Length")
            if resp.status in (204, 304):  # no body, by definition
                self.end_headers()
                resp.read()
                return
            if size is not None:
                self.send_header("Content-Length", size)
                self.end_headers()
                self.wfile.write(resp.read())
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := resp.read1(65536):  # a watch: pass each event on as it comes
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def _serve(self) -> None:
            try:
                self._forward()
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                # the client went away (a watch it stopped) or the proxy is stopping and cut
                # the upstream connection (http.client then reads from a closed file)
                self.close_connection = True
                if self.upstream is not None:
                    proxy.forget(self.upstream)
                    self.upstream = None

        def finish(self) -> None:
            if self.upstream is not None:
                proxy.forget(self.upstream)
            with contextlib.suppress(OSError):
                super().finish()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler
