"""Shared-storage mode: volumes as directories on a shared filesystem.

A :class:`~statehold.shared.root.SharedRoot` is one directory on a filesystem every node
can reach (GlusterFS, NFS, CephFS, or any mount; or a plain local directory). A volume is
the directory ``<root>/<name>``; its metadata lives beside it under ``<root>/.statehold``.
Sizes are enforced by the filesystem where it can (XFS project quotas, btrfs qgroups) and
accounted otherwise. Nothing here imports gRPC or Kubernetes. The adapters -- the CSI
backend (``statehold.csi.backend_shared``), the operator's node agent and the CLI -- call
one service, :class:`~statehold.shared.service.SharedVolumes`, built from the Statehold
home: the roots this host knows, their share mounts, and the volumes, snapshots and
backups on them, by id ``shared/<root key>/<name>``.

Modules: ``names`` (validation, sizes), ``types`` (value types), ``metadata`` (sidecar
JSON), ``share`` (mounting a share, ref-counted; the mount table, binds and unmounts are
the engine's ``mounts``),
``quota`` / ``xfs_project`` / ``btrfs_qgroup`` (size enforcement), ``usage`` (accounting),
``copying`` (reflink or plain tree copies), ``root`` (the volume store), ``snapshots``,
``backups`` (file-tree backups and restores), ``registry`` (the roots a host knows),
``ids`` (volume and snapshot ids), ``parameters`` (a shared StorageClass),
``service`` (the service over all of these), ``discovery`` (Local PV discovery).
"""
