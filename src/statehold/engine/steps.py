"""Names of the crash-injection points of each mutating operation, in execution order.

``Node(fault_hook=...)`` calls the hook with each name right after that step is done (and
durable). Volume and snapshot operations record an intent in the pool database first;
``create_pool`` records its intent in the node registry; an interrupted ``import_pool``
leaves only a probe mount, which the next Node removes. The crash test kills the process
at every one of them and checks that recovery leaves a consistent pool. Keep this table in
step with the code: a step that is not listed here is a step nobody has shown to be
crash-safe.
"""

from __future__ import annotations

from collections.abc import Callable

FaultHook = Callable[[str], None]

STEPS: dict[str, tuple[str, ...]] = {
    "create_volume": ("create_volume.intent", "create_volume.file", "create_volume.commit"),
    "clone": ("clone.intent", "clone.frozen", "clone.file", "clone.commit"),
    "create_snapshot": ("snapshot.intent", "snapshot.frozen", "snapshot.cloned",
                        "snapshot.commit"),
    "expand": ("expand.intent", "expand.truncated", "expand.refreshed", "expand.commit",
               "expand.grown"),
    "delete_volume": ("delete_volume.intent", "delete_volume.unlinked", "delete_volume.commit"),
    "create_pool": ("create_pool.intent", "create_pool.attached", "create_pool.mounted",
                    "create_pool.database", "create_pool.commit"),
    "import_pool": ("import_pool.probed",),
    # the registry's exporting mark written (every process lets go), then the pool unmounted
    # (its images still attached, the entry still registered): a retry finishes, an import
    # of the same disks cancels
    "export_pool": ("export_pool.marked", "export_pool.unmounted"),
    "delete_snapshot": ("delete_snapshot.intent", "delete_snapshot.unlinked",
                        "delete_snapshot.commit"),
    # a group snapshot (engine/groups.py): member_precloned after each mounted member's whole
    # reflink (before the freeze), freezing once the freeze keeper was asked to freeze
    # every mounted member (side by side), member_frozen once per frozen member after it
    # answered, member_cloned after each member's reflink; the keeper thaws if we die
    "snapshot_group": ("group.intent", "group.member_precloned", "group.freezing",
                       "group.member_frozen", "group.frozen",
                       "group.member_cloned", "group.cloned", "group.thawed", "group.commit"),
}


def no_fault(step: str) -> None:
    """The default hook: do nothing."""
