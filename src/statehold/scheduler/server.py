"""The HTTP layer: routes kube-scheduler's POSTs to the service, nothing more.

Paths: ``POST .../filter``, ``POST .../prioritize`` (the last path segment decides, so a
``urlPrefix`` with a path works), ``GET /healthz``, ``GET /metrics``. HTTP/1.1 with
keep-alive, as kube-scheduler's client reuses connections. Every answer is JSON with a
Content-Length (metrics: Prometheus text); no path answers 500.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from statehold.errors import InvalidArgument
from statehold.scheduler import wire
from statehold.scheduler.service import Extender

log = logging.getLogger(__name__)

MAX_BODY = 64 << 20
"""Largest request accepted: 1,000 full Node objects are a few MiB."""


class ExtenderServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], extender: Extender) -> None:
        self.extender = extender
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, embedding); stop with :meth:`stop`."""
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                             name="statehold-extender", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per answer on Linux).
    disable_nagle_algorithm = True
    # An idle keep-alive connection holds a thread; close it after this many seconds
    # (kube-scheduler's Go client drops idle connections after 90 s anyway).
    timeout = 120
    server: ExtenderServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=http " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, wire.dumps(obj))

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else -1
        except ValueError:
            n = -1
        if n < 0:
            self.close_connection = True
            self._json(411, {"Error": "statehold: a Content-Length is required"})
            return None
        if n > MAX_BODY:
            self.close_connection = True
            self._json(413, {"Error": f"statehold: request larger than {MAX_BODY} bytes"})
            return None
        return self.rfile.read(n)

    def do_POST(self) -> None:
        body = self._read_body()  # always read it: the connection is kept alive
        if body is None:
            return
        verb = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if verb not in ("filter", "prioritize"):
            self._json(404, {"Error": f"statehold: no verb at {self.path}; use filter or "
                             "prioritize"})
            return
        try:
            ext = self.server.extender
            status, payload = ext.filter(body) if verb == "filter" else ext.prioritize(body)
            out = wire.dumps(payload)
        except Exception as exc:  # the service never raises; this is the last guard
            log.exception("event=handler_error verb=%s", verb)
            status, out = 200, wire.dumps(wire.filter_result(None, [], error=f"statehold: {exc}"))
        self._send(status, out)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/healthz":
            self._send(200, b"ok", "text/plain; charset=utf-8")
        elif path == "/metrics":
            self._send(200, self.server.extender.metrics.exposition(),
                       "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._json(404, {"Error": f"statehold: nothing at {self.path}"})

    def _not_allowed(self) -> None:
        self.close_connection = True  # its body, if any, is left unread
        self._json(405, {"Error": f"statehold: {self.command} not allowed"})

    do_PUT = do_DELETE = do_PATCH = _not_allowed


def parse_listen(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``:PORT`` means all interfaces)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"--listen must be HOST:PORT, got {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
