"""The dashboard's HTTP server: pages, sign-in, confirmation and actions, over a
:class:`statehold.dashboard.sources.Source` (a cluster, or this host's home).

Identity in a cluster: reads use the dashboard's own Kube (the operator's service account, or the
kubeconfig given to ``statehold dashboard``) and are the same for every visitor, so the
server listens on 127.0.0.1 only and is reached through ``kubectl port-forward``. To act,
a user signs in with a Kubernetes bearer token (or sends ``Authorization: Bearer``);
``as_user(token)`` gives a Kube with that identity, SelfSubjectAccessReviews decide which
buttons show, and the resources are created with the token, so RBAC and audit see the
user. Every POST carries a CSRF token equal to the browser's ``statehold_csrf`` cookie
(double submit, cookies SameSite=Strict).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from statehold.dashboard import pages
from statehold.dashboard.actions import KIND_OF, TITLE, Action
from statehold.dashboard.sources import ClusterSource, Source
from statehold.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StateholdError,
)
from statehold.kube.facade import Kube

log = logging.getLogger(__name__)
UserKube = Callable[[str], Kube]
CSRF_COOKIE, TOKEN_COOKIE = "statehold_csrf", "statehold_token"
MAX_FORM = 16384


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    cookies: dict[str, str]
    authorization: str = ""


@dataclass(slots=True)
class Response:
    status: int
    body: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)


class Dashboard:
    """The pages and actions over a source; ``handle`` maps a Request to a Response."""

    def __init__(self, source: Source) -> None:
        self.source = source

    @classmethod
    def for_cluster(cls, kube: Kube, as_user: UserKube | None = None) -> Dashboard:
        return cls(ClusterSource(kube, as_user))

    @staticmethod
    def _token(req: Request) -> str:
        if req.authorization.startswith("Bearer "):
            return req.authorization.removeprefix("Bearer ").strip()
        return req.cookies.get(TOKEN_COOKIE, "")

    # -- dispatch ----------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        csrf = req.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        try:
            resp = self._route(req, csrf)
        except StateholdError as exc:
            code = (400 if isinstance(exc, InvalidArgument) else 403
                    if isinstance(exc, PermissionDenied) else 404 if isinstance(exc, NotFound)
                    else 502)
            resp = Response(code, pages.layout("Error", "", f'<p class="Failed" id="error">'
                                               f"{pages.h(exc)}</p>", user=""))
        if CSRF_COOKIE not in req.cookies:
            resp.headers.append(("Set-Cookie", f"{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; "
                                               "SameSite=Strict"))
        return resp

    def _route(self, req: Request, csrf: str) -> Response:
        if req.method == "POST":
            sent = req.form.get("csrf", "")
            if not req.cookies.get(CSRF_COOKIE) or not hmac.compare_digest(
                    sent, req.cookies[CSRF_COOKIE]):
                return Response(403, pages.layout("Refused", "", "<p>Bad or missing CSRF "
                                                  "token: reload the page.</p>", user=""))
            if req.path == "/login":
                return self._login(req, csrf)
            if req.path == "/act":
                return self._act(req)
            return Response(404, "not found")
        token, src = self._token(req), self.source
        who = "signed in" if token else ""
        if req.path in ("/", ""):
            return Response(303, headers=[("Location", "/pools")])
        if req.path == "/favicon.ico":
            return Response(204)
        if req.path == "/login":
            return self._page("Sign in", "/login", pages.login_page(csrf), who)
        if req.path == "/logout":
            return Response(303, headers=[("Location", "/pools"), (
                "Set-Cookie", f"{TOKEN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")])
        if req.path == "/pools":
            return self._page("Nodes and pools", req.path, pages.pools_page(src.pools()), who)
        if req.path == "/volumes":
            rows = src.volumes()
            allowed = src.allowed(token, {v.namespace for v in rows})
            targets = {ns: src.targets(ns) for ns in allowed}
            return self._page("Volumes", req.path, pages.volumes_page(rows, allowed, targets), who)
        if req.path == "/snapshots":
            return self._page("Snapshots", req.path,
                              pages.snapshots_page(src.snapshots()), who)
        if req.path == "/backups":
            lines = src.backups()
            allowed = src.allowed(token, {line.namespace for line in lines})
            return self._page("Backups", req.path, pages.backups_page(lines, allowed), who)
        if req.path == "/schedules":
            return self._page("Schedules", req.path,
                              pages.schedules_page(src.schedules()), who)
        if req.path == "/restores":
            return self._page("Restores", req.path,
                              pages.restores_page(src.restores()), who)
        if req.path == "/confirm":
            action = self._action(req.query)
            if action.verb not in src.allowed(token, {action.namespace}).get(
                    action.namespace, set()):
                return Response(403, pages.layout("Refused", "", "<p>Your identity may not do "
                                                  "this: sign in with a token that may.</p>",
                                                  user=who))
            return self._page(f"Confirm: {TITLE[action.verb]}", "", pages.confirm_page(
                action, csrf, src.targets(action.namespace)), who)
        return Response(404, pages.layout("Not found", "", "<p>No such page.</p>", user=who))

    @staticmethod
    def _action(fields: dict[str, str]) -> Action:
        verb = fields.get("verb", "")
        if verb not in KIND_OF:
            raise InvalidArgument(f"unknown action {verb!r}")
        return Action(verb, fields.get("ns", ""), fields.get("subject", ""),
                      fields.get("target", ""), fields.get("new_claim", ""))

    def _page(self, title: str, here: str, body: str, who: str) -> Response:
        return Response(200, pages.layout(title, here, body, user=who),
                        [("Cache-Control", "no-store")])

    def _login(self, req: Request, csrf: str) -> Response:
        token = req.form.get("token", "").strip()
        if not token:
            return self._page("Sign in", "/login", pages.login_page(csrf, "no token"), "")
        return Response(303, headers=[("Location", "/volumes"), (
            "Set-Cookie", f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")])

    def _act(self, req: Request) -> Response:
        token = self._token(req)
        if not token:
            return Response(403, pages.layout("Refused", "", "<p>Sign in to act.</p>", user=""))
        action = self._action(req.form)
        kind, name = self.source.perform(token, action)
        log.info("dashboard action=%s namespace=%s subject=%s created=%s/%s", action.verb,
                 action.namespace, action.subject, kind, name)
        return self._page("Done", "", pages.done_page(kind, name, action.namespace),
                          "signed in")


def _handler(app: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("dashboard " + fmt, *args)

        def _serve(self) -> None:
            url = urlparse(self.path)
            form: dict[str, str] = {}
            if self.command == "POST":
                n = min(int(self.headers.get("Content-Length") or 0), MAX_FORM)
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
            cookies = SimpleCookie(self.headers.get("Cookie") or "")
            req = Request(self.command, url.path,
                          {k: v[-1] for k, v in parse_qs(url.query).items()}, form,
                          {k: m.value for k, m in cookies.items()},
                          self.headers.get("Authorization") or "")
            resp = app.handle(req)
            data = resp.body.encode()
            self.send_response(resp.status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src "
                             "'unsafe-inline'; img-src data:; form-action 'self'")
            self.send_header("X-Frame-Options", "DENY")
            for k, v in resp.headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

    return Handler


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "127.0.0.1", int(port)


@contextmanager
def serving(app: Dashboard, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve app in a thread (port 0: a free one); yields the base URL."""
    server = ThreadingHTTPServer((host, port), _handler(app))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def start(app: Dashboard, host: str, port: int) -> Callable[[], None]:
    """Serve app in a daemon thread beside another job (the operator); returns its stop.
    A busy or bad address is FailedPrecondition, raised here, so the process that asked
    exits at start rather than run without the dashboard it was told to serve."""
    try:
        server = ThreadingHTTPServer((host, port), _handler(app))
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve the dashboard on {host}:{port}: {exc}") from exc
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    log.info("dashboard listening=http://%s:%d", host, server.server_address[1])

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


def serve_forever(app: Dashboard, host: str, port: int) -> None:
    server = ThreadingHTTPServer((host, port), _handler(app))
    log.info("dashboard listening=http://%s:%d", host, server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
