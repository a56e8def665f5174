"""statehold.kube: the only package that talks to the Kubernetes API.

* :mod:`statehold.kube.facade`  the ``Kube`` Protocol and its written contract (no
  Kubernetes import: type against it from anywhere).
* :mod:`statehold.kube.kinds`   the kinds we use (our CRDs and the built-ins).
* :mod:`statehold.kube.memory`  ``MemoryKube``, the in-memory stand-in used by tests.
* :mod:`statehold.kube.client`  ``ApiKube``, the official client (kubeconfig/in-cluster).
* :mod:`statehold.kube.kopf_runtime` kopf behind the facade: registration, retry
  vocabulary, login, settings, run (the only kopf import; what is registered is decided
  in :mod:`statehold.controller.operator`).

Usage::

    from statehold.kube.facade import Kube
    from statehold.kube.kinds import PVC
    from statehold.kube.memory import MemoryKube   # tests
    kube: Kube = MemoryKube()
    kube.list(PVC, "default", label_selector="app=db")

This ``__init__`` imports nothing heavy, so importing the facade does not load kubernetes.
Adapters reach a real cluster through :func:`connect`, which loads the client only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statehold.kube.facade import Kube


def connect(kubeconfig: str | None = None) -> Kube:
    """The facade over a real API server: the kubeconfig when given, else in-cluster, else
    the default kubeconfig. The official client is imported here, on first use, so commands
    that never talk to a cluster do not pay for loading it."""
    from statehold.kube.client import ApiKube

    return ApiKube.connect(kubeconfig)
