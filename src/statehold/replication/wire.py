"""Replication wire format, version 1 (docs/design/replication.md §3).

Every frame is ``prefix (16) ‖ meta ‖ crc32(prefix ‖ meta) (4) ‖ data``; the CRC covers
everything but an extent's data, which its BLAKE3 checksum (inside the metadata) covers.
One encoded frame is at most :data:`MAX_FRAME` bytes, so a transport carries each as one
message. Decoding is strict: byte damage is Corrupt, a version we do not speak
FailedPrecondition, a well-formed frame with a field out of range InvalidArgument.
"""

from __future__ import annotations

import builtins
import enum
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import blake3

from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument
from statehold.replication.points import U64_MAX, parse_point

MAGIC = b"SHRP"
VERSION = 1
MAX_PAYLOAD = 1 << 20
"""Largest extent data (1 MiB); extents are cut at multiples of it."""
MAX_META = 1024
MAX_FRAME = MAX_PAYLOAD + 4096
"""Largest encoded frame: what a transport's message limit must allow."""
MAX_OFFSET = 1 << 63
CHECKSUM_SIZE = 32
MAX_VOLUME = 255

_PREFIX = struct.Struct(">4sBBHII")
_CRC = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_U64X3 = struct.Struct(">QQQ")
_RECORD = struct.Struct(">BQQ")
PREFIX_SIZE = _PREFIX.size
_BASE_PRESENT = 1


class FrameType(enum.IntEnum):
    HEADER = 1
    EXTENT = 2
    ZERO = 3
    END = 4
    ACK = 5


Data = bytes | memoryview
"""An extent's bytes: a decoded extent's data is a read-only view into the received frame
(not a copy of it)."""


def checksum(data: Data) -> bytes:
    """BLAKE3-256 of an extent's data."""
    return blake3.blake3(data).digest()


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """Opens a stream: which volume, at which epoch, from which base to which point."""

    volume: str
    epoch: int
    base: str | None
    point: str
    size: int
    resume_from: int = 0


@dataclass(frozen=True, slots=True)
class Extent:
    """``data`` at ``offset``; ``checksum`` = BLAKE3-256(data).

    ``verified``: the checksum was computed from, or checked against, ``data`` by this
    module (:meth:`of`, :func:`decode`), so a receiver need not hash the bytes a second
    time. Not part of the frame (never encoded, ignored by ``==``); an extent built by hand
    is unverified and gets checked.
    """

    offset: int
    data: Data
    checksum: bytes
    verified: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def of(cls, offset: int, data: Data) -> Extent:
        return cls(offset, data, checksum(data), verified=True)

    @property
    def length(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Zero:
    """``length`` bytes at ``offset`` read as zeros (the receiver punches a hole)."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Closes a stream: frame count, data bytes and the stream digest (§3.3)."""

    extents: int
    bytes: int
    digest: builtins.bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver's answer: ``point`` is now its acknowledged point, at ``epoch``."""

    point: str
    epoch: int
    bytes: int


Frame = StreamHeader | Extent | Zero | StreamEnd


# -- validation ------------------------------------------------------------------------------
def _int(name: str, value: object, lo: int = 0, hi: int = U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _bytes(name: str, value: object, size: int | None = None) -> Data:
    """``value`` if it is bytes, or a flat view of bytes (whose ``len`` is its byte count)."""
    flat_view = (isinstance(value, memoryview) and value.ndim == 1 and value.itemsize == 1
                 and value.contiguous)
    if not (isinstance(value, bytes) or flat_view):
        raise InvalidArgument(f"{name} must be bytes")
    data = cast(Data, value)
    if size is not None and len(data) != size:
        raise InvalidArgument(f"{name} must be {size} bytes")
    return data


def check(frame: Frame | Ack) -> None:
    """Field ranges of one frame (InvalidArgument); does not verify checksums."""
    if isinstance(frame, StreamHeader):
        if not isinstance(frame.volume, str) or not 1 <= len(frame.volume.encode()) <= MAX_VOLUME:
            raise InvalidArgument(f"volume must be 1-{MAX_VOLUME} bytes of UTF-8")
        _int("epoch", frame.epoch, 1)
        _int("size", frame.size, 1, MAX_OFFSET)
        _int("resume_from", frame.resume_from, 0, frame.size)
        parse_point(frame.point)
        if frame.base is not None:
            parse_point(frame.base)
            if frame.resume_from:
                raise InvalidArgument("only a seed (no base) may resume")
    elif isinstance(frame, Extent):
        _int("offset", frame.offset, 0, MAX_OFFSET)
        data = _bytes("data", frame.data)
        _int("extent length", len(data), 1, MAX_PAYLOAD)
        _int("extent end", frame.offset + len(data), 0, MAX_OFFSET)
        _bytes("checksum", frame.checksum, CHECKSUM_SIZE)
    elif isinstance(frame, Zero):
        _int("offset", frame.offset, 0, MAX_OFFSET)
        _int("length", frame.length, 1, MAX_OFFSET)
        _int("zero end", frame.offset + frame.length, 0, MAX_OFFSET)
    elif isinstance(frame, StreamEnd):
        _int("extents", frame.extents)
        _int("bytes", frame.bytes)
        _bytes("digest", frame.digest, CHECKSUM_SIZE)
    elif isinstance(frame, Ack):
        parse_point(frame.point)
        _int("epoch", frame.epoch, 1)
        _int("bytes", frame.bytes)
    else:
        raise InvalidArgument(f"not a replication frame: {type(frame).__name__}")


# -- encoding ----------------------------------------------------------------------------------
def _str(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">H", len(raw)) + raw


def header_meta(header: StreamHeader) -> tuple[int, bytes]:
    """(flags, meta bytes) of a header; the meta bytes also open the stream digest."""
    flags = _BASE_PRESENT if header.base is not None else 0
    meta = (_U64X3.pack(header.epoch, header.size, header.resume_from)
            + _str(header.volume) + _str(header.point)
            + (_str(header.base) if header.base is not None else b""))
    return flags, meta


def encode(frame: Frame | Ack) -> bytes:
    """One frame as bytes (InvalidArgument for a field out of range)."""
    check(frame)
    flags = 0
    data: Data = b""
    if isinstance(frame, StreamHeader):
        kind = FrameType.HEADER
        flags, meta = header_meta(frame)
    elif isinstance(frame, Extent):
        kind, meta, data = FrameType.EXTENT, _U64.pack(frame.offset) + frame.checksum, frame.data
    elif isinstance(frame, Zero):
        kind, meta = FrameType.ZERO, _U64X2.pack(frame.offset, frame.length)
    elif isinstance(frame, StreamEnd):
        kind, meta = FrameType.END, _U64X2.pack(frame.extents, frame.bytes) + frame.digest
    else:
        kind, meta = FrameType.ACK, _U64X2.pack(frame.epoch, frame.bytes) + _str(frame.point)
    head = _PREFIX.pack(MAGIC, VERSION, kind, flags, len(meta), len(data)) + meta
    return head + _CRC.pack(zlib.crc32(head)) + data


# -- decoding ----------------------------------------------------------------------------------
class _Reader:
    """Reads the fields of one metadata block; running short is Corrupt."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise Corrupt("frame metadata is shorter than its fields")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def str(self) -> str:
        (n,) = struct.unpack(">H", self.take(2))
        try:
            return self.take(n).decode()
        except UnicodeDecodeError as exc:
            raise Corrupt("frame string is not UTF-8") from exc

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise Corrupt("frame metadata is longer than its fields")


def frame_size(prefix: bytes) -> int:
    """Total size of the frame whose first :data:`PREFIX_SIZE` bytes are ``prefix``."""
    if len(prefix) < PREFIX_SIZE:
        raise Corrupt(f"truncated frame: {len(prefix)} bytes, the prefix alone is {PREFIX_SIZE}")
    magic, version, _kind, _flags, meta_len, data_len = _PREFIX.unpack_from(prefix)
    meta_len, data_len = int(meta_len), int(data_len)
    if magic != MAGIC:
        raise Corrupt(f"not a replication frame (magic {magic!r})")
    if version != VERSION:
        raise FailedPrecondition(f"replication wire version {version}; this build speaks {VERSION}")
    if meta_len > MAX_META or data_len > MAX_PAYLOAD:
        raise Corrupt(f"frame lengths out of range (meta {meta_len}, data {data_len})")
    return PREFIX_SIZE + meta_len + _CRC.size + data_len


def _parse(buf: bytes) -> tuple[FrameType, int, bytes, memoryview]:
    total = frame_size(buf)
    if len(buf) != total:
        raise Corrupt(f"frame is {len(buf)} bytes, its prefix says {total}")
    _magic, _version, kind, flags, meta_len, data_len = _PREFIX.unpack_from(buf)
    end = PREFIX_SIZE + meta_len
    (crc,) = _CRC.unpack_from(buf, end)
    if zlib.crc32(memoryview(buf)[:end]) != crc:
        raise Corrupt("frame CRC mismatch")
    try:
        ftype = FrameType(kind)
    except ValueError as exc:
        raise InvalidArgument(f"unknown frame type {kind}") from exc
    if ftype is not FrameType.EXTENT and data_len:
        raise Corrupt(f"a {ftype.name.lower()} frame carries {data_len} data bytes")
    if flags & ~(_BASE_PRESENT if ftype is FrameType.HEADER else 0):
        raise InvalidArgument(f"undefined flags {flags:#x} on a {ftype.name.lower()} frame")
    # the data is a view, not a copy: an extent's megabyte is not duplicated on its way
    return ftype, flags, buf[PREFIX_SIZE:end], memoryview(buf)[end + _CRC.size:]


def _decode(buf: bytes) -> Frame | Ack:
    ftype, flags, meta, data = _parse(buf)
    r = _Reader(meta)
    frame: Frame | Ack
    if ftype is FrameType.HEADER:
        epoch, size, resume_from = r.u64(), r.u64(), r.u64()
        volume, point = r.str(), r.str()
        base = r.str() if flags & _BASE_PRESENT else None
        frame = StreamHeader(volume=volume, epoch=epoch, base=base, point=point, size=size,
                             resume_from=resume_from)
    elif ftype is FrameType.EXTENT:
        offset, digest = r.u64(), r.take(CHECKSUM_SIZE)
        if checksum(data) != digest:
            raise Corrupt(f"extent at offset {offset}: data does not match its checksum")
        frame = Extent(offset, data, digest, verified=True)
    elif ftype is FrameType.ZERO:
        frame = Zero(r.u64(), r.u64())
    elif ftype is FrameType.END:
        frame = StreamEnd(r.u64(), r.u64(), r.take(CHECKSUM_SIZE))
    else:
        epoch, nbytes = r.u64(), r.u64()
        frame = Ack(point=r.str(), epoch=epoch, bytes=nbytes)
    r.done()
    check(frame)
    return frame


def decode(buf: bytes) -> Frame:
    """One stream frame from exactly its bytes (Corrupt, FailedPrecondition, InvalidArgument)."""
    frame = _decode(bytes(buf))
    if isinstance(frame, Ack):
        raise InvalidArgument("an ack frame inside a stream")
    return frame


def decode_ack(buf: bytes) -> Ack:
    """The receiver's answer from exactly its bytes."""
    frame = _decode(bytes(buf))
    if not isinstance(frame, Ack):
        raise InvalidArgument(f"expected an ack frame, got {type(frame).__name__}")
    return frame


def read_frames(stream: BinaryIO) -> Iterator[Frame]:
    """Frames from a byte stream of concatenated encoded frames, until a clean EOF.

    A frame cut short by EOF is Corrupt (a truncated stream, not a clean end).
    """
    while True:
        prefix = _read_exactly(stream, PREFIX_SIZE, allow_eof=True)
        if not prefix:
            return
        rest = _read_exactly(stream, frame_size(prefix) - PREFIX_SIZE, allow_eof=False)
        yield decode(prefix + rest)


def _read_exactly(stream: BinaryIO, n: int, *, allow_eof: bool) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            if allow_eof and got == 0:
                return b""
            raise Corrupt(f"truncated frame: stream ended {n - got} bytes short")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# -- stream digest -----------------------------------------------------------------------------
class StreamDigest:
    """BLAKE3 over the header's meta, then per extent/zero frame: type, offset, length
    (and an extent's checksum). Sender and receiver compute it the same way."""

    def __init__(self, header: StreamHeader) -> None:
        self._hash = blake3.blake3(header_meta(header)[1])
        self.extents = 0
        self.bytes = 0

    def add(self, frame: Extent | Zero) -> None:
        if isinstance(frame, Extent):
            self._hash.update(_RECORD.pack(FrameType.EXTENT, frame.offset, len(frame.data)))
            self._hash.update(frame.checksum)
            self.bytes += len(frame.data)
        else:
            self._hash.update(_RECORD.pack(FrameType.ZERO, frame.offset, frame.length))
        self.extents += 1

    def end(self) -> StreamEnd:
        return StreamEnd(self.extents, self.bytes, self._hash.digest())
