"""kopf, behind the facade: the one module that imports kopf.

The operator's wiring (:mod:`statehold.controller.operator`) decides *what* is registered
for each role; this module knows *how* kopf is told: handler registration for a kind's
changes, the retry vocabulary (``retry_later`` / ``give_up``), connecting exactly as the
facade does, per-role persistence settings, and running kopf until a stop flag is set.
It imports nothing from the layers above, so the arrows stay pointing down.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import kopf

from statehold.kube.kinds import GROUP, VERSION, Kind

Registry = kopf.OperatorRegistry
"""A set of handlers for one operator process (one per role)."""

Settings = kopf.OperatorSettings
"""kopf's settings for one process (see :func:`settings_for`)."""

Filter = Callable[..., bool]


def new_registry() -> Registry:
    return kopf.OperatorRegistry()


def on_changes(registry: Registry, kind: Kind, fn: Callable[..., None], *, id: str,
               when: Filter | None = None, labels: Mapping[str, str] | None = None) -> None:
    """Call ``fn(name=, namespace=, retry=, ...)`` when an object of ``kind`` is created,
    updated, or found at start-up (resume). Handlers re-read the object through the facade,
    so they are idempotent whichever of the three fired."""
    filters: dict[str, Any] = {}
    if when is not None:
        filters["when"] = when
    if labels:
        filters["labels"] = dict(labels)
    for deco in (kopf.on.create, kopf.on.update, kopf.on.resume):
        deco(GROUP, VERSION, kind.plural, id=id, registry=registry, backoff=5.0, **filters)(fn)


def retry_later(message: str, delay: float) -> NoReturn:
    """Ask kopf to call the handler again after ``delay`` seconds."""
    raise kopf.TemporaryError(message, delay=delay)


def give_up(message: str) -> NoReturn:
    """Tell kopf this change can never succeed: no more retries until the object changes."""
    raise kopf.PermanentError(message)


def login_like(registry: Registry, configuration: Any) -> None:
    """Make kopf connect exactly as the facade does (same kubeconfig or in-cluster account),
    instead of kopf's default guess. Called again by kopf on 401: the client's refresh hook
    re-reads a rotated service-account token."""

    def login(**_kw: Any) -> kopf.ConnectionInfo:
        header = (configuration.get_api_key_with_prefix("BearerToken")
                  or configuration.get_api_key_with_prefix("authorization") or "")
        scheme, _sep, token = header.partition(" ") if " " in header else ("", "", header)
        return kopf.ConnectionInfo(
            server=configuration.host, ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl, scheme=scheme or None, token=token or None,
            username=configuration.username or None, password=configuration.password or None,
            certificate_path=configuration.cert_file, private_key_path=configuration.key_file)

    kopf.on.login(registry=registry, id="statehold")(login)


def settings_for(prefix: str, *, max_workers: int = 4) -> Settings:
    """kopf's settings for one process whose progress annotations start with ``prefix``:
    processes with different prefixes never fight over an object's annotations."""
    s = kopf.OperatorSettings()
    s.posting.enabled = False  # we record our own Events, with reasons users can act on
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
    s.persistence.finalizer = f"{prefix}/finalizer"
    s.execution.max_workers = max_workers
    return s


async def _operate(registry: Registry, settings: kopf.OperatorSettings,
                   stop: threading.Event) -> None:
    # kopf waits on a threading.Event in an executor thread that never ends if kopf stops
    # for another reason (SIGTERM in the main thread), and asyncio.run then waits for that
    # thread forever; so bridge the Event into an asyncio.Event from a daemon thread.
    loop = asyncio.get_running_loop()
    flag = asyncio.Event()

    def bridge() -> None:
        stop.wait()
        with contextlib.suppress(RuntimeError):  # the loop may be closed by then
            loop.call_soon_threadsafe(flag.set)

    threading.Thread(target=bridge, name="stop-bridge", daemon=True).start()
    await kopf.operator(registry=registry, settings=settings, standalone=True,
                        clusterwide=True, stop_flag=flag)


def run_kopf(registry: Registry, settings: kopf.OperatorSettings, stop: threading.Event) -> None:
    """Run kopf cluster-wide and standalone (leadership is ours, not kopf's peering) until
    ``stop`` is set."""
    asyncio.run(_operate(registry, settings, stop))
