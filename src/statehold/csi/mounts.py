"""What NodePublishVolume/NodeUnpublishVolume do beyond mounting: target paths and devices.

Mount-table lookups, bind and unmount live in the engine's mount toolkit
(``statehold.engine.mounts``); what stays here is CSI's own: removing exactly the target the
driver created, and the read-only flag of a block volume's device.
"""

from __future__ import annotations

from pathlib import Path

from statehold.runner import run


def remove_target(target: Path) -> None:
    """Remove the file or empty directory NodePublishVolume created (never recursive)."""
    try:
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        else:
            target.unlink()
    except FileNotFoundError:
        pass


def device_readonly(device: str) -> bool:
    return run(["blockdev", "--getro", device]).stdout.strip() == "1"


def set_device_readonly(device: str, readonly: bool) -> None:
    """Read-only at the block layer: a ro *mount* does not stop writes through a device
    node (the kernel checks MNT_READONLY for files and directories only)."""
    run(["blockdev", "--setro" if readonly else "--setrw", device])
