"""The keys a replicated volume carries in its PV's volume context (replication.md §8).

The CSI plugin writes them at CreateVolume (and keeps the first two as engine volume labels,
so a retried CreateVolume, GetVolume and ListVolumes answer the same); the operator reads
them from the PV to make the volume's ReplicatedVolume record. One definition, so the
writer and the reader cannot drift apart.
"""

from __future__ import annotations

REPLICAS_KEY = "statehold.io/replicas"
"""How many copies, the primary included (``"1"`` or absent: a plain local volume)."""
RPO_KEY = "statehold.io/rpo-seconds"
"""The recovery point objective in whole seconds."""
NODE_KEY = "statehold.io/node"
"""The node whose CreateVolume made the first copy (the first primary)."""
DEFAULT_RPO_SECONDS = 15
"""The RPO of a StorageClass that names none."""
