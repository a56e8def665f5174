"""A writing workload for the full-pool test: numbered records, each fsynced.

``python -m tests.integration.csi.fsync_writer FILE RECORD_BYTES STOP``: writes record 0, 1,
2, ... at offset ``n * RECORD_BYTES`` of FILE, fsyncs after each, and prints ``OK n`` once
the fsync returned success (so every record up to the last ``OK`` must survive). A
failed write or fsync prints ``E n <errno name>`` and the same record is written again,
as an application that retries would, until it succeeds. It stops, between two records,
once the file ``STOP`` exists (outside the volume: it may turn read-only). Records are
reproducible from their number (:func:`record`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import sys
import time


def record(seq: int, size: int) -> bytes:
    """Record ``seq``: its number, then bytes derived from it (checkable on read-back)."""
    body = hashlib.sha256(f"record-{seq}".encode()).digest() * (size // 32 + 1)
    return struct.pack("<Q", seq) + body[: size - 8]


def main(path: str, size: int, stop: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    seq = 0
    while not os.path.exists(stop):
        try:
            os.pwrite(fd, record(seq, size), seq * size)
            os.fsync(fd)
        except OSError as exc:
            print(f"E {seq} {errno.errorcode.get(exc.errno or 0, exc.errno)}", flush=True)
            time.sleep(0.02)  # a pause, not a synchronisation: the pool is full for a while
            continue
        print(f"OK {seq}", flush=True)
        seq += 1
    os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
