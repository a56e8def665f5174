"""Test data: sparse images of mixed content, written fast."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 1 << 20


def write_image(path: Path, size: int, layout: list[tuple[int, bytes]]) -> Path:
    """A sparse file of ``size`` bytes with ``layout`` (offset, bytes) written; rest holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in layout:
            f.seek(off)
            f.write(data)
    return path


def mixed_image(path: Path, size: int = 8 * MiB, seed: int = 0) -> Path:
    """Random, text, written zeros and holes, with a part not chunk-aligned at the end."""
    rnd = os.urandom(2 * MiB) if seed == 0 else bytes((i * seed) % 251 for i in range(2 * MiB))
    text = b"".join(b"line %d of the log: status=ok\n" % i for i in range(40000))[: MiB + 4096]
    return write_image(path, size + 12345, [(0, rnd), (3 * MiB, text), (5 * MiB, bytes(MiB)),
                                            (size, b"tail" * 3000)])


def same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512
