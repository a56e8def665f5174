"""statehold.controller: the operator's decisions, free of any Kubernetes library.

Each handler is: read the spec -> decide with pure code (``pools``, ``locate``,
``schedules``, ``targets`` ...) -> act through adapters (the engine ``Node``, the backup
engine via :mod:`backup_runner`, the :class:`statehold.kube.facade.Kube` facade) -> write
``status.conditions`` and an Event (:mod:`report`). The kopf registration that calls these
lives in :mod:`statehold.controller.operator` (kopf itself behind
:mod:`statehold.kube.kopf_runtime`); tests call them directly on ``MemoryKube``.
"""
