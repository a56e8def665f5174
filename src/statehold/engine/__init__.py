"""The node storage engine: disk pools, thin volumes, O(1) snapshots and clones, expand.

Public surface (see /docs/design/pool-metadata.md for the on-disk contract):

* :class:`statehold.engine.node.Node` - the pools of one host (registry, open, import);
* :class:`statehold.engine.pool.Pool` - volumes and snapshots of one pool;
* :mod:`statehold.engine.types` - value types; :mod:`statehold.engine.names` - validation;
* :mod:`statehold.engine.extents` - changed-extent diff between snapshots.

Inside: ``metadata`` (SQLite per pool), ``lifecycle`` and ``snapshotting`` (operations with
intents), ``recovery``, ``pooldisk`` / ``pooldir`` (what a pool sits on), and one module
per kernel interface: ``loop`` (losetup), ``ficlone``, ``freeze`` (FIFREEZE/FITHAW), ``fs``
(mkfs, mount, grow), ``mounts`` (mountinfo). This package never imports an adapter.
"""
