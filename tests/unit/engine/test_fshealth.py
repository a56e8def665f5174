"""The kernel-log and checker parsers of engine/fshealth, on captured output."""

from __future__ import annotations

from statehold.engine import fshealth

# captured from an XFS volume on a full pool (issue 18, defect 5), plus neighbours
LOG = [
    "XFS (loop4): Mounting V5 Filesystem 854aa339-685a-44d0-89a5-0a82b53eb72e",
    "XFS (loop4): Ending clean mount",
    "XFS (loop4): metadata I/O error in \"xfs_buf_ioend\" at daddr 0x1 len 8 error 28",  # an older mount
    "XFS (loop4): Unmounting Filesystem 854aa339-685a-44d0-89a5-0a82b53eb72e",
    "XFS (loop4): Mounting V5 Filesystem c7b1c7c0-84df-4a44-b3c0-67f7f2d78725",
    "XFS (loop40): Metadata I/O Error (0x1) detected at xfs_buf.c:1134.  Shutting down filesystem.",
    "XFS (loop4): Ending clean mount",
    "critical space allocation error, dev loop4, sector 821864 op 0x1:(WRITE) flags 0x4800",
    "XFS (loop4): Unmounting Filesystem c7b1c7c0-84df-4a44-b3c0-67f7f2d78725",
    "XFS (loop4): metadata I/O error in \"__xfs_buf_ioend+0x1e0/0x590\" at daddr 0xfcff8 len 8 error 28",
    "XFS (loop4): Metadata I/O Error (0x1) detected at __xfs_buf_ioend+0x523/0x590 (fs/xfs/xfs_buf.c:1134)."
    "  Shutting down filesystem.",
    "XFS (loop4): Please unmount the filesystem and rectify the problem(s)",
    "EXT4-fs (loop5): mounted filesystem b92bef65 r/w with ordered data mode. Quota mode: none.",
]


def test_device_lines_start_at_the_last_mount_and_never_match_another_device() -> None:
    lines = fshealth.device_lines(LOG, "/dev/loop4")
    assert lines[0].endswith("Mounting V5 Filesystem c7b1c7c0-84df-4a44-b3c0-67f7f2d78725")
    assert not any("loop40" in line or "loop5" in line for line in lines)
    assert "critical space allocation error, dev loop4, sector 821864 op 0x1:(WRITE) flags 0x4800" in lines
    assert fshealth.device_lines(LOG, "loop40") == [LOG[5]]


def test_trouble_is_the_filesystem_failing_not_a_single_write() -> None:
    found = fshealth.trouble(fshealth.device_lines(LOG, "loop4"))
    assert len(found) == 2 and "Shutting down filesystem" in found[-1]
    assert fshealth.trouble(LOG[:2]) == []
    assert fshealth.trouble(["critical space allocation error, dev loop4, sector 1"]) == []
    for line in ("EXT4-fs error (device loop7): ext4_find_entry:1455: inode #2: comm ls: reading directory",
                 "EXT4-fs (loop7): Remounting filesystem read-only",
                 "BTRFS error (device loop7): bdev /dev/loop7 errs: wr 1, rd 0, flush 0",
                 "BTRFS: error (device loop7) in btrfs_commit_transaction: errno=-28 No space left"
                 " (Transaction aborted)"):
        assert fshealth.trouble([line]) == [line]


def test_a_device_without_a_mount_line_keeps_every_line() -> None:
    """The ring buffer may have dropped the mount line: what remains is all newer."""
    tail = LOG[-4:-1]
    assert fshealth.device_lines(tail, "loop4") == tail


def test_kmsg_records_are_parsed_and_continuation_lines_dropped() -> None:
    raw = b"3,1234,5678901,-;XFS (loop4): Shutting down filesystem.\n SUBSYSTEM=block\n DEVICE=b7:4\n"
    assert fshealth.parse_kmsg_record(raw) == "XFS (loop4): Shutting down filesystem."
    assert fshealth.parse_kmsg_record(b"garbage") is None


def test_checker_summary_names_the_findings() -> None:
    out = ("Phase 1 - find and verify superblock...\n"
           "entry \"s158\" in directory inode 189 points to non-existent inode 1037468, would junk entry\n"
           "bad hash table for directory inode 189 (no data entry): would rebuild\n"
           "No modify flag set, skipping filesystem flush and exiting.\n")
    said = fshealth.summary("xfs_repair", 1, out)
    assert said.startswith("xfs_repair exit 1: entry \"s158\"") and "would rebuild" in said
    assert fshealth.summary("e2fsck", 0, "clean\n") == "e2fsck exit 0: clean"
