"""The web dashboard: server-rendered pages over the cluster's custom resources.

``views`` reads the cluster through the Kube facade into plain rows (``sources`` offers
them, or the same rows from this host's engine in the standalone mode); ``pages`` renders
them as HTML (the standard library only: ``html.escape``, no templates engine, no
JavaScript build); ``server`` serves them on 127.0.0.1 with ``http.server`` and turns the
confirmed actions into ordinary custom resources, created as the requesting user so the
API server's RBAC and audit apply. See docs/dashboard.md.
"""
