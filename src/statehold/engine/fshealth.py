"""Is a volume's filesystem sound? What the kernel said about its device, and a read-only check.

An unmount can succeed while the filesystem shuts itself down: XFS on a pool out of space
writes back metadata at unmount, the loop device answers ENOSPC ("metadata I/O error ...
error 28"), XFS gives up ("Shutting down filesystem") and ``umount(2)`` still returns 0.
The kernel log is then the only witness, so it is read for that device (``/dev/kmsg``,
or ``dmesg`` through the runner where the device node is unavailable):

* :func:`device_lines` keeps the lines naming the device since its filesystem was last
  mounted (loop devices are reused: an older mount's complaints are not this one's);
* :func:`trouble` keeps those that say the filesystem failed (shut down, corruption,
  journal aborted, forced read-only) — not the block layer's per-write errors, which the
  filesystem reports to the writer itself;
* :func:`check` runs the filesystem's own read-only checker on an unmounted device or
  image: the "is it repaired yet" question.

The parsers are pure functions, tested on captured kernel output.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from statehold.errors import CommandError
from statehold.runner import run

KMSG = Path("/dev/kmsg")
MAX_RECORDS = 200_000
"""Records read from the kernel log at most (its ring buffer holds far fewer)."""

MOUNTED = re.compile(r"Mounting V\d+ Filesystem|mounted filesystem|first mount of filesystem")
"""A filesystem on the device was mounted (XFS, ext4, btrfs): where its history starts."""

TROUBLE = re.compile(
    r"Shutting down filesystem|shut down|Corruption|[Mm]etadata I/O [Ee]rror|[Ll]og I/O [Ee]rror"
    r"|EXT4-fs error|Remounting filesystem read-only|[Aa]borting journal|aborted journal"
    r"|BTRFS (?:error|critical)|[Tt]ransaction aborted|forced readonly"
)
"""Lines saying the filesystem itself failed."""

CHECKERS: dict[str, list[str]] = {
    "xfs": ["xfs_repair", "-n", "-f"],
    "ext4": ["e2fsck", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly"],
}
"""Read-only checks (they change nothing) by filesystem; exit status 0 means clean."""

CHECK_TIMEOUT = 1800.0


def parse_kmsg_record(raw: bytes) -> str | None:
    """The message of one ``/dev/kmsg`` record (``prio,seq,usec,flags;text`` then
    continuation lines), or None when malformed."""
    head, sep, rest = raw.decode(errors="replace").partition(";")
    if not sep or head.count(",") < 3:
        return None
    return rest.split("\n", 1)[0]


def read_kernel_log() -> list[str]:
    """Every message still in the kernel's ring buffer, oldest first."""
    lines: list[str] = []
    try:
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return _dmesg()
    try:
        for _ in range(MAX_RECORDS):
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                break  # the end of the buffer
            except BrokenPipeError:
                continue  # the record was overwritten while we read: go on with the next
            if not raw:
                break
            text = parse_kmsg_record(raw)
            if text is not None:
                lines.append(text)
    finally:
        os.close(fd)
    return lines


def _dmesg() -> list[str]:
    with contextlib.suppress(CommandError):
        return run(["dmesg", "--notime"], timeout=30).stdout.splitlines()
    return []


def device_lines(lines: Sequence[str], device: str) -> list[str]:
    """Lines naming ``device`` (``/dev/loop4`` or ``loop4``; never ``loop40``) since the
    last line saying a filesystem on it was mounted."""
    name = re.escape(os.path.basename(device))
    mine = re.compile(rf"(?<![\w/])(?:/dev/)?{name}(?!\w)")
    found: list[str] = []
    for line in lines:
        if not mine.search(line):
            continue
        if MOUNTED.search(line):
            found = []
        found.append(line)
    return found


def trouble(lines: Sequence[str]) -> list[str]:
    """The lines that say the filesystem failed."""
    return [line for line in lines if TROUBLE.search(line)]


def kernel_trouble(device: str) -> tuple[list[str], list[str]]:
    """``(failure lines, every line)`` the kernel logged about ``device`` since its
    filesystem was last mounted."""
    lines = device_lines(read_kernel_log(), device)
    return trouble(lines), lines


def check(fstype: str, path: Path | str) -> tuple[bool, str]:
    """Run the read-only checker of ``fstype`` on an unmounted device or image file:
    ``(clean, the checker's last words)``. An unknown filesystem or a missing checker is
    not clean: nothing vouches for it."""
    argv = CHECKERS.get(fstype)
    if argv is None:
        return False, f"no read-only checker for {fstype!r}"
    try:
        proc = run([*argv, str(path)], check=False, timeout=CHECK_TIMEOUT)
    except CommandError as exc:
        return False, f"{argv[0]} could not run: {exc.stderr.strip()[-300:]}"
    return proc.returncode == 0, summary(argv[0], proc.returncode, proc.stdout + "\n" + proc.stderr)


def summary(tool: str, code: int, output: str, keep: int = 3) -> str:
    """A checker's verdict in one line: its exit status and its first findings."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    findings = [line for line in lines if FINDING.search(line)] or lines[-1:]
    return f"{tool} exit {code}" + (": " + "; ".join(findings[:keep]) if findings else "")


FINDING = re.compile(r"would|error|bad |corrupt|inconsisten|unexpected|dirty|valuable", re.I)
"""Lines of a checker's output that report a problem (xfs_repair says "would ...")."""
