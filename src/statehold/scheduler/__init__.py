"""The scheduler extender: pods run on the node that holds their data, and a burst of
pods never over-commits a pool (``docs/scheduling.md``).

Modules, from pure to I/O::

    core       placement decisions: filter verdicts, scores, ties (pure, mypy strict)
    quantity   Kubernetes quantities as bytes
    view       the ClusterView Protocol and its in-memory implementation
    objects    Kubernetes JSON → ClusterView values (pure)
    claims     a pod's claims → the core's PodVolumes, through a ClusterView
    kubeview   a ClusterView over statehold.kube (the only way to the API)
    ledger     reservations of capacity for scheduled, not yet provisioned pods
    wire       the extender/v1 JSON: ExtenderArgs, ExtenderFilterResult, HostPriorityList
    service    request bytes → answer; never raises, fails open
    metrics    Prometheus metrics of one service
    server     the HTTP layer (ThreadingHTTPServer)
"""
