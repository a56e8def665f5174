"""Wire format v1: round trips, strict refusal of damaged or foreign bytes."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument
from statehold.replication.wire import (
    MAX_FRAME,
    MAX_PAYLOAD,
    Ack,
    Extent,
    Frame,
    StreamDigest,
    StreamEnd,
    StreamHeader,
    Zero,
    decode,
    decode_ack,
    encode,
    read_frames,
)

U64 = (1 << 64) - 1
points = st.builds(lambda e, s: f"e{e}-{s}", st.integers(1, U64), st.integers(1, U64))
volumes = st.text(min_size=1, max_size=60).filter(lambda v: len(v.encode()) <= 255)


@st.composite
def headers(draw: st.DrawFn) -> StreamHeader:
    size = draw(st.integers(1, 1 << 63))
    base = draw(st.none() | points)
    resume = 0 if base is not None else draw(st.integers(0, size))
    return StreamHeader(volume=draw(volumes), epoch=draw(st.integers(1, U64)), base=base,
                        point=draw(points), size=size, resume_from=resume)


extents = st.builds(Extent.of, st.integers(0, (1 << 63) - MAX_PAYLOAD),
                    st.binary(min_size=1, max_size=4096))
zeros = st.builds(Zero, st.integers(0, 1 << 62), st.integers(1, 1 << 62))
ends = st.builds(StreamEnd, st.integers(0, U64), st.integers(0, U64),
                 st.binary(min_size=32, max_size=32))
frames = st.one_of(headers(), extents, zeros, ends)
acks = st.builds(Ack, points, st.integers(1, U64), st.integers(0, U64))


@given(frames)
def test_every_frame_round_trips(frame: Frame) -> None:
    raw = encode(frame)
    assert len(raw) <= MAX_FRAME
    assert decode(raw) == frame


@given(acks)
def test_acks_round_trip_and_are_not_stream_frames(ack: Ack) -> None:
    raw = encode(ack)
    assert decode_ack(raw) == ack
    with pytest.raises(InvalidArgument):
        decode(raw)


@given(frames, st.data())
def test_any_truncation_is_corrupt(frame: Frame, data: st.DataObject) -> None:
    raw = encode(frame)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(Corrupt):
        decode(raw[:cut])


@given(frames, st.data())
@settings(max_examples=300)
def test_any_single_bit_flip_is_refused(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode(frame))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((Corrupt, FailedPrecondition, InvalidArgument)):
        decode(bytes(raw))


def test_extent_data_flip_is_corrupt() -> None:
    raw = bytearray(encode(Extent.of(4096, b"x" * 4096)))
    raw[-1] ^= 0xFF
    with pytest.raises(Corrupt, match="checksum"):
        decode(bytes(raw))


def test_extent_with_wrong_checksum_is_corrupt_even_when_crc_matches() -> None:
    forged = Extent(0, b"abc", Extent.of(0, b"abd").checksum)
    with pytest.raises(Corrupt):
        decode(encode(forged))


def test_unknown_version_is_failed_precondition() -> None:
    raw = bytearray(encode(Zero(0, 4096)))
    raw[4] = 2
    with pytest.raises(FailedPrecondition, match="version 2"):
        decode(bytes(raw))


def test_trailing_bytes_are_corrupt() -> None:
    with pytest.raises(Corrupt):
        decode(encode(Zero(0, 4096)) + b"\0")


def test_unknown_type_with_valid_crc_is_invalid_argument() -> None:
    import zlib

    raw = bytearray(encode(Zero(0, 4096)))
    raw[5] = 9
    meta_len = struct.unpack_from(">I", raw, 8)[0]
    struct.pack_into(">I", raw, 16 + meta_len, zlib.crc32(bytes(raw[:16 + meta_len])))
    with pytest.raises(InvalidArgument, match="unknown frame type"):
        decode(bytes(raw))


@pytest.mark.parametrize("frame", [
    Extent.of(0, b"x" * (MAX_PAYLOAD + 1)),
    Extent(0, b"", b"\0" * 32),
    Zero(0, 0),
    StreamHeader(volume="v", epoch=0, base=None, point="e1-1", size=4096),
    StreamHeader(volume="v", epoch=1, base="e1-1", point="e1-2", size=4096, resume_from=1),
    StreamHeader(volume="v", epoch=1, base=None, point="e1-1", size=4096, resume_from=4097),
    StreamHeader(volume="v", epoch=1, base=None, point="p1", size=4096),
    StreamHeader(volume="", epoch=1, base=None, point="e1-1", size=4096),
    StreamEnd(0, 0, b"short"),
])
def test_out_of_range_fields_are_refused_on_encode(frame: Frame) -> None:
    with pytest.raises(InvalidArgument):
        encode(frame)


def test_read_frames_splits_a_byte_stream_and_refuses_a_cut_one() -> None:
    seq: list[Frame] = [StreamHeader("v", 1, None, "e1-1", 8192), Extent.of(0, b"a" * 10),
                        Zero(4096, 4096), StreamEnd(2, 10, b"\0" * 32)]
    raw = b"".join(encode(f) for f in seq)
    assert list(read_frames(io.BytesIO(raw))) == seq
    with pytest.raises(Corrupt, match="truncated"):
        list(read_frames(io.BytesIO(raw[:-3])))


def test_digest_depends_on_every_frame_and_the_header() -> None:
    header = StreamHeader("v", 1, None, "e1-1", 1 << 20)
    body: list[Extent | Zero] = [Extent.of(0, b"a"), Zero(4096, 4096)]

    def digest(h: StreamHeader, items: list[Extent | Zero]) -> bytes:
        d = StreamDigest(h)
        for item in items:
            d.add(item)
        return d.end().digest

    base = digest(header, body)
    assert digest(header, body[:1]) != base
    assert digest(header, body[::-1]) != base
    assert digest(StreamHeader("v", 2, None, "e1-1", 1 << 20), body) != base
    assert digest(header, [Extent.of(0, b"b"), Zero(4096, 4096)]) != base


def test_a_decoded_extent_is_marked_verified_and_one_built_by_hand_is_not() -> None:
    # the receiver skips a second BLAKE3 only for extents decode (or Extent.of) hashed
    ext = Extent.of(4096, b"payload" * 100)
    decoded = decode(encode(ext))
    assert isinstance(decoded, Extent) and decoded.verified and ext.verified
    assert not Extent(ext.offset, ext.data, ext.checksum).verified
    assert decoded == Extent(ext.offset, ext.data, ext.checksum)  # not part of the frame
    assert bytes(decoded.data) == ext.data
