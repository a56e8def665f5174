"""Pack and index objects of format version 2 (format §11.2, §11.3): pure encodings.

A pack is chunk blobs laid end to end, then an encrypted header naming them (chunk id,
offset, length), then the header's length. Each chunk blob is the version 1 blob of that
chunk (associated data = its ``chunks/`` key), so it is bound to its chunk id and to no
pack: repack and conversion copy blob bytes unchanged. An index object lists, for many
packs, where each chunk's blob is. Nothing here touches a store; see :mod:`.packer` (write)
and :mod:`.packreader` (read).
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from statehold.backup.crypto import Codec
from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument

PACK_PREFIX = "packs/"
INDEX_PREFIX = "index/"
PACK_ID_LEN = 16
DEFAULT_PACK_SIZE = 16 << 20
MIN_PACK_SIZE = 1 << 20
MAX_PACK_SIZE = 256 << 20
INDEX_MAX_ENTRIES = 65536
"""Writers split index objects above this many entries (3.5 MiB: loading one is cheap)."""

INDEX_FORMAT = "statehold-index"
INDEX_VERSION = 1
_HEADER_ENTRY = struct.Struct(">32sII")
_INDEX_ENTRY = struct.Struct(">32s16sII")
_U32 = struct.Struct(">I")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one chunk's blob is: ``[offset, offset + length)`` of pack ``pack``."""

    cid: bytes
    pack: bytes
    offset: int
    length: int

    def row(self) -> tuple[bytes, bytes, int, int]:
        return (self.cid, self.pack, self.offset, self.length)


def new_pack_id() -> bytes:
    return os.urandom(PACK_ID_LEN)


def new_index_name() -> str:
    return os.urandom(16).hex()


def pack_key(pid: bytes) -> str:
    h = pid.hex()
    return f"{PACK_PREFIX}{h[:2]}/{h}"


def index_key(name: str) -> str:
    return INDEX_PREFIX + name


def pack_id_of(key: str) -> bytes:
    """The pack id a ``packs/`` key names; Corrupt when the key does not parse."""
    name = key.rpartition("/")[2]
    if not _HEX32.match(name) or key != pack_key(bytes.fromhex(name)):
        raise Corrupt(f"{key}: not a pack key")
    return bytes.fromhex(name)


def index_name_of(key: str) -> str:
    name = key[len(INDEX_PREFIX):]
    if not key.startswith(INDEX_PREFIX) or not _HEX32.match(name):
        raise Corrupt(f"{key}: not an index key")
    return name


def chunk_key(cid: bytes) -> str:
    """A chunk's object key in a version 1 repository (format §2)."""
    h = cid.hex()
    return f"chunks/{h[:2]}/{h}"


def blob_key(cid: bytes) -> str:
    """The associated-data key of a chunk blob: its version 1 key (format §11.2), so a blob
    decodes the same in a pack as it did as its own object."""
    return chunk_key(cid)


def check_pack_size(pack_size: int) -> int:
    if not MIN_PACK_SIZE <= pack_size <= MAX_PACK_SIZE:
        raise InvalidArgument(f"pack size {pack_size} must be between 1 MiB and 256 MiB")
    return pack_size


class PackBuilder:
    """One pack being filled: blobs appended, then :meth:`seal` adds the header."""

    def __init__(self, codec: Codec, pid: bytes | None = None) -> None:
        self.codec = codec
        self.pid = pid or new_pack_id()
        self._parts: list[bytes] = []
        self._entries: list[tuple[bytes, int, int]] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, cid: bytes, blob: bytes) -> None:
        self._entries.append((cid, self.size, len(blob)))
        self._parts.append(blob)
        self.size += len(blob)

    def seal(self) -> tuple[bytes, list[Entry]]:
        """The pack's bytes and its entries."""
        data = b"".join([*self._parts, pack_trailer(self.codec, self.pid, self._entries)])
        self._parts = []
        return data, [Entry(cid, self.pid, off, length) for cid, off, length in self._entries]


def pack_trailer(codec: Codec, pid: bytes, entries: list[tuple[bytes, int, int]]) -> bytes:
    """What follows a pack's blobs: its encrypted header naming ``(chunk id, offset,
    length)`` of each, then the header's length. The header is stored, not compressed (ids
    do not compress) and bound to the pack's key."""
    head = _U32.pack(len(entries)) + b"".join(
        _HEADER_ENTRY.pack(cid, off, length) for cid, off, length in entries)
    sealed = codec.encode(pack_key(pid), head, compress=False)
    return sealed + _U32.pack(len(sealed))


def header_length(tail: bytes, key: str, size: int) -> int:
    """The length of the header blob, from a pack's last 4 bytes; Corrupt if impossible."""
    if len(tail) != 4 or size < 4:
        raise Corrupt(f"{key}: pack too short to hold a header")
    hlen = int(_U32.unpack(tail)[0])
    if hlen > size - 4:
        raise Corrupt(f"{key}: header length {hlen} exceeds the pack ({size} bytes)")
    return hlen


def decode_header(codec: Codec, key: str, header_blob: bytes, size: int) -> list[Entry]:
    """The entries of the pack ``key`` of ``size`` bytes, from its header blob; Corrupt if
    the header does not decode or its entries overlap or run into the header."""
    pid = pack_id_of(key)
    plain = codec.decode(key, header_blob)
    try:
        (count,) = _U32.unpack_from(plain, 0)
    except struct.error:
        raise Corrupt(f"{key}: header is truncated") from None
    if len(plain) != 4 + count * _HEADER_ENTRY.size:
        raise Corrupt(f"{key}: header names {count} chunks but holds {len(plain) - 4} bytes")
    limit = size - 4 - len(header_blob)
    out = []
    end = 0
    for cid, off, length in _HEADER_ENTRY.iter_unpack(memoryview(plain)[4:]):
        if off < end or off + length > limit:
            raise Corrupt(f"{key}: header entry of chunk {cid.hex()} overlaps or leaves the pack")
        end = off + length
        out.append(Entry(cid, pid, off, length))
    return out


def parse_pack(codec: Codec, key: str, data: bytes) -> list[Entry]:
    """The entries of a whole pack's bytes (verify, rebuild)."""
    hlen = header_length(data[-4:], key, len(data))
    return decode_header(codec, key, data[len(data) - 4 - hlen : len(data) - 4], len(data))


def encode_index(entries: Iterable[Entry]) -> bytes:
    rows = list(entries)
    head = json.dumps({"format": INDEX_FORMAT, "version": INDEX_VERSION, "created": time.time(),
                       "packs": len({e.pack for e in rows})}, separators=(",", ":")).encode()
    return b"".join([_U32.pack(len(head)), head,
                     *(_INDEX_ENTRY.pack(e.cid, e.pack, e.offset, e.length) for e in rows)])


def decode_index(data: bytes, key: str) -> Iterator[tuple[bytes, bytes, int, int]]:
    """Rows (chunk id, pack id, offset, length) of an index object's plaintext; Corrupt (or
    FailedPrecondition for a newer version) before yielding anything."""
    try:
        (hlen,) = _U32.unpack_from(data, 0)
        head = json.loads(data[4 : 4 + hlen])
        if head.get("format") != INDEX_FORMAT:
            raise Corrupt(f"{key}: not an index object")
        if int(head["version"]) > INDEX_VERSION:
            raise FailedPrecondition(f"{key}: index version {head['version']} is newer than this "
                                     f"Statehold understands ({INDEX_VERSION}); upgrade")
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise Corrupt(f"{key}: index does not parse: {exc}") from exc
    body = memoryview(data)[4 + hlen :]
    if len(body) % _INDEX_ENTRY.size:
        raise Corrupt(f"{key}: index has a partial entry")
    return _INDEX_ENTRY.iter_unpack(body)

