"""A byte relay between a TCP port and a Unix socket, for tests.

The nodes of a netns cluster cannot reach the test process's 127.0.0.1 (the API server
the test serves), and nothing here may listen beyond 127.0.0.1 or a namespace of the test's
own. A Unix socket crosses network namespaces (it is a file), so: the test process listens
on a socket file and forwards to its server (:class:`UnixRelay`, a thread), and in a node's
namespace ``python -m tests.integration.agent.relay PORT SOCKET`` listens on that
namespace's own 127.0.0.1:PORT and forwards to the socket file. Stopping the test side's
relay (:class:`UnixRelay`) makes the server unreachable from every node, as an API server
outage would.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve(listener: socket.socket, connect: Callable[[], socket.socket],
           stop: threading.Event, opened: list[socket.socket] | None = None) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            upstream = connect()
        except OSError:
            client.close()
            continue
        if opened is not None:
            opened += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


class UnixRelay:
    """The test process's side: the socket file ``path`` forwarded to 127.0.0.1:``port``.
    :meth:`stop` also cuts the connections it carries (a kept-alive client connection must
    not outlive an "outage"); :meth:`start` again after it."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._opened: list[socket.socket] = []

    def start(self) -> None:
        self._stop = threading.Event()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path.unlink(missing_ok=True)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(
            target=_serve, args=(listener, lambda: socket.create_connection(("127.0.0.1", self.port)),
                                 self._stop, self._opened), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for sock in self._opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._opened.clear()
        self.path.unlink(missing_ok=True)


def main() -> None:
    """``relay.py PORT SOCKET``: 127.0.0.1:PORT (this namespace's) -> the socket file."""
    port, path = int(sys.argv[1]), sys.argv[2]
    listener = socket.create_server(("127.0.0.1", port), backlog=64)

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s

    _serve(listener, connect, threading.Event())


if __name__ == "__main__":
    main()
