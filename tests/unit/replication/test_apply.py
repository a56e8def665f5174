"""Frames built from a diff, applied onto the old image, give the new image (plain files).

The diff here is any set of ranges covering every changed block (FIEMAP may over-report,
never under-report), so the property is: for all old, new and covering ranges,
``apply(frames(new, ranges)) onto old == new``; a seed applied onto a hole gives ``new``.
"""

from __future__ import annotations

import fcntl
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.engine.extents import merge
from statehold.errors import Corrupt, InvalidArgument, Unavailable
from statehold.replication.receiving import ExtentWriter, apply_frames
from statehold.replication.sending import SnapshotReader, frames
from statehold.replication.wire import MAX_PAYLOAD, Extent, Frame, StreamDigest, StreamHeader, Zero

BLOCK = 4096


def _image(rng: random.Random, blocks: int) -> bytearray:
    out = bytearray()
    for _ in range(blocks):
        out += bytes(BLOCK) if rng.random() < 0.3 else rng.randbytes(BLOCK)
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[int, int]]]:
    rng = random.Random(draw(st.integers(0, 2**32)))
    old_blocks = draw(st.integers(1, 600))
    old = _image(rng, old_blocks)
    new = bytearray(old) + bytes(BLOCK * draw(st.integers(0, 64)))
    total = len(new) // BLOCK
    for _ in range(draw(st.integers(0, 12))):
        start = draw(st.integers(0, total - 1))
        count = draw(st.integers(1, min(400, total - start)))
        fill = bytes(BLOCK * count) if draw(st.booleans()) else rng.randbytes(BLOCK * count)
        new[start * BLOCK:(start + count) * BLOCK] = fill
    padded_old = bytes(old) + bytes(len(new) - len(old))
    ranges = [(b * BLOCK, BLOCK) for b in range(total)
              if padded_old[b * BLOCK:(b + 1) * BLOCK] != new[b * BLOCK:(b + 1) * BLOCK]]
    for _ in range(draw(st.integers(0, 3))):  # over-reporting is allowed
        start = draw(st.integers(0, total - 1))
        ranges.append((start * BLOCK, BLOCK * draw(st.integers(1, total - start))))
    return bytes(old), bytes(new), merge(ranges)


def _file(path: Path, data: bytes, size: int | None = None) -> Path:
    path.write_bytes(data)
    if size is not None:
        os.truncate(path, size)
    return path


def _apply(target: Path, header: StreamHeader, stream: list[Frame], **kw: object) -> int:
    fd = os.open(target, os.O_RDWR)
    try:
        it = iter(stream)
        assert next(it) == header
        return apply_frames(fd, header, it, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)


@given(cases())
@settings(max_examples=40, deadline=None)
def test_applying_a_diff_onto_old_gives_new(tmp_path_factory: pytest.TempPathFactory,
                                            case: tuple[bytes, bytes, list[tuple[int, int]]]) -> None:
    old, new, ranges = case
    d = tmp_path_factory.mktemp("diff")
    source = _file(d / "new", new)
    target = _file(d / "old", old, len(new))
    header = StreamHeader("vol", 1, "e1-1", "e1-2", len(new))
    stream = list(frames(header, source, ranges))
    sent = _apply(target, header, stream)
    assert target.read_bytes() == new
    assert sent == sum(len(f.data) for f in stream if isinstance(f, Extent))
    assert all(f.length <= MAX_PAYLOAD for f in stream if isinstance(f, Extent))


@given(cases())
@settings(max_examples=20, deadline=None)
def test_a_seed_onto_a_hole_gives_new_and_skips_zeros(tmp_path_factory: pytest.TempPathFactory,
                                                      case: tuple[bytes, bytes, list[tuple[int, int]]]
                                                      ) -> None:
    _old, new, _ranges = case
    d = tmp_path_factory.mktemp("seed")
    source = _file(d / "new", new)
    target = _file(d / "hole", b"", len(new))
    header = StreamHeader("vol", 1, None, "e1-1", len(new))
    stream = list(frames(header, source, [(0, len(new))]))
    assert not any(isinstance(f, Zero) for f in stream)
    _apply(target, header, stream)
    assert target.read_bytes() == new


def _sample(tmp_path: Path) -> tuple[bytes, Path, Path, StreamHeader, list[Frame]]:
    rng = random.Random(7)
    image = _image(rng, 1200)  # ~4.7 MiB: several frames
    image[MAX_PAYLOAD:2 * MAX_PAYLOAD + 8192] = bytes(MAX_PAYLOAD + 8192)  # a zero chunk
    new = bytes(image)
    source = _file(tmp_path / "new", new)
    target = _file(tmp_path / "old", b"", len(new))
    header = StreamHeader("vol", 1, "e1-1", "e1-2", len(new))
    return new, source, target, header, list(frames(header, source, [(0, len(new))]))


def test_a_cut_at_any_frame_is_unavailable(tmp_path: Path) -> None:
    _new, _source, target, header, stream = _sample(tmp_path)
    assert any(isinstance(f, Zero) for f in stream)
    for cut in range(1, len(stream)):
        with pytest.raises(Unavailable):
            _apply(target, header, stream[:cut])


def test_a_lost_frame_fails_the_digest(tmp_path: Path) -> None:
    _new, _source, target, header, stream = _sample(tmp_path)
    with pytest.raises(Corrupt, match="frames"):
        _apply(target, header, stream[:2] + stream[3:])


def test_reordered_frames_are_refused(tmp_path: Path) -> None:
    _new, _source, target, header, stream = _sample(tmp_path)
    with pytest.raises(InvalidArgument, match="out of order"):
        _apply(target, header, [stream[0], stream[2], stream[1], *stream[3:]])


def test_an_extent_whose_data_was_altered_is_corrupt(tmp_path: Path) -> None:
    _new, _source, target, header, stream = _sample(tmp_path)
    first = next(i for i, f in enumerate(stream) if isinstance(f, Extent))
    ext = stream[first]
    assert isinstance(ext, Extent)
    bad = Extent(ext.offset, bytes([ext.data[0] ^ 1]) + ext.data[1:], ext.checksum)
    with pytest.raises(Corrupt, match="checksum"):
        _apply(target, header, [*stream[:first], bad, *stream[first + 1:]])


def test_an_extent_past_the_size_is_refused(tmp_path: Path) -> None:
    header = StreamHeader("vol", 1, None, "e1-1", 8192)
    target = _file(tmp_path / "t", b"", 8192)
    with pytest.raises(InvalidArgument):
        _apply(target, header, [header, Extent.of(8000, b"x" * 500)])


def test_a_seed_cut_after_a_checkpoint_resumes_from_it(tmp_path: Path) -> None:
    new, source, target, _header, _stream = _sample(tmp_path)
    header = StreamHeader("vol", 1, None, "e1-1", len(new))
    stream = list(frames(header, source, [(0, len(new))]))
    marks: list[int] = []
    with pytest.raises(Unavailable):
        _apply(target, header, stream[:len(stream) // 2], checkpoint=1 << 20,
               on_checkpoint=marks.append)
    assert marks and marks == sorted(marks)
    resumed = StreamHeader("vol", 1, None, "e1-1", len(new), resume_from=marks[-1])
    rest = list(frames(resumed, source, [(0, len(new))]))
    sent = _apply(target, resumed, rest)
    full = sum(len(f.data) for f in stream if isinstance(f, Extent))
    assert 0 < sent < full
    assert target.read_bytes() == new


def test_aligned_and_unaligned_extents_both_land_and_the_descriptor_is_left_as_given(
        tmp_path: Path) -> None:
    # aligned extents take the direct path, an unaligned one switches the rest to buffered
    # writes; the image must be the same bytes either way
    rng = random.Random(11)
    size = 4 * MAX_PAYLOAD
    target = _file(tmp_path / "t", b"", size)
    pieces = [(0, MAX_PAYLOAD), (MAX_PAYLOAD, 8192), (MAX_PAYLOAD + 3 * BLOCK + 7, 1000),
              (2 * MAX_PAYLOAD, MAX_PAYLOAD), (3 * MAX_PAYLOAD + 100, 5000)]
    want = bytearray(size)
    stream: list[Frame] = []
    header = StreamHeader("vol", 1, None, "e1-1", size)
    for offset, length in pieces:
        data = rng.randbytes(length)
        want[offset:offset + length] = data
        stream.append(Extent.of(offset, data))
    digest = StreamDigest(header)
    for frame in stream:
        digest.add(frame)  # type: ignore[arg-type]
    fd = os.open(target, os.O_RDWR)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert apply_frames(fd, header, iter([*stream, digest.end()])) == sum(n for _, n in pieces)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags
    finally:
        os.close(fd)
    assert target.read_bytes() == want


def test_the_writer_bypasses_the_page_cache_where_the_filesystem_allows_it(tmp_path: Path) -> None:
    target = _file(tmp_path / "t", b"", 2 * MAX_PAYLOAD)
    data = random.Random(12).randbytes(MAX_PAYLOAD)
    fd = os.open(target, os.O_RDWR)
    try:
        writer = ExtentWriter(fd)
        assert writer.direct  # this host's scratch filesystem (ext4/xfs) has O_DIRECT
        writer.write(memoryview(b"\0" * 60 + data)[60:], MAX_PAYLOAD)  # a view at any address
        assert writer.direct
        writer.write(b"abc", 5)  # unaligned: buffered from now on
        assert not writer.direct
        writer.close()
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)
    raw = target.read_bytes()
    assert raw[MAX_PAYLOAD:] == data and raw[5:8] == b"abc"


def test_the_snapshot_reader_returns_the_bytes_asked_for_direct_or_not(tmp_path: Path) -> None:
    data = random.Random(13).randbytes(3 * MAX_PAYLOAD)
    path = _file(tmp_path / "point", data)
    reader = SnapshotReader(path)
    try:
        assert reader.direct  # this host's scratch filesystem (ext4/xfs) has O_DIRECT
        for pos, length, limit in [(0, MAX_PAYLOAD, len(data)), (MAX_PAYLOAD, BLOCK, 2 * MAX_PAYLOAD),
                                   (2 * MAX_PAYLOAD, MAX_PAYLOAD, len(data))]:
            assert reader.read(pos, length, limit) == data[pos:pos + length]
        assert reader.direct
        assert reader.read(5, 100, 4096) == data[5:105]  # unaligned: buffered from now on
        assert not reader.direct
        assert reader.read(MAX_PAYLOAD, MAX_PAYLOAD, len(data)) == data[MAX_PAYLOAD:2 * MAX_PAYLOAD]
        with pytest.raises(Corrupt, match="short read"):
            reader.read(len(data) - BLOCK, 2 * BLOCK, len(data) + BLOCK)
    finally:
        reader.close()
