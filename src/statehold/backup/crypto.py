"""Blob encoding (format §4), key wrapping (§5) and chunk ids (§1).

``compress then encrypt``: zstd, then AES-256-GCM under the data key with a fresh random
96-bit nonce per object and the object's key as associated data, so a blob moved under
another key fails authentication. Chunk ids are keyed BLAKE3 under the id key, so an id
says nothing about content to anyone without the repository password.

Codec objects are kept per thread: zstd contexts are not thread-safe, and reusing them
avoids re-allocating their tables for every chunk.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from statehold.errors import Corrupt, PermissionDenied

MAGIC = b"SHB\x01"
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = len(MAGIC) + NONCE_LEN + TAG_LEN + 1
CODEC_STORED = 0
CODEC_ZSTD = 1
ID_LEN = 32


@dataclass(frozen=True, slots=True)
class ScryptParams:
    n: int = 1 << 15
    r: int = 8
    p: int = 1
    salt: bytes = field(default=b"", repr=False)


def derive_kek(password: bytes, params: ScryptParams) -> bytes:
    """The key-encryption key: scrypt(password) -- costly on purpose (guessing)."""
    return Scrypt(salt=params.salt, length=32, n=params.n, r=params.r, p=params.p).derive(password)


def wrap(kek: bytes, secret: bytes, repo_id: str) -> tuple[bytes, bytes]:
    nonce = os.urandom(NONCE_LEN)
    return nonce, AESGCM(kek).encrypt(nonce, secret, b"statehold-key:" + repo_id.encode())


def unwrap(kek: bytes, nonce: bytes, wrapped: bytes, repo_id: str) -> bytes:
    try:
        return AESGCM(kek).decrypt(nonce, wrapped, b"statehold-key:" + repo_id.encode())
    except InvalidTag:
        raise PermissionDenied("wrong repository password (the repository key did not decrypt)") from None


class Codec:
    """Encodes and decodes blobs and computes chunk ids for one repository's keys."""

    def __init__(self, master: bytes, *, level: int = 1) -> None:
        if len(master) != 64:
            raise ValueError("master secret must be 64 bytes")
        self._data_key = master[:32]
        self._id_key = master[32:]
        self._level = level
        self._tls = threading.local()
        self._zero_ids: dict[int, bytes] = {}

    def _ctx(self) -> threading.local:
        tls = self._tls
        if not hasattr(tls, "aead"):
            tls.aead = AESGCM(self._data_key)
            tls.zc = zstandard.ZstdCompressor(level=self._level)
            tls.zd = zstandard.ZstdDecompressor()
        return tls

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3-256 of the plaintext (32 raw bytes)."""
        return blake3.blake3(data, key=self._id_key).digest()

    def zero_id(self, length: int) -> bytes:
        """The id an all-zero chunk of ``length`` bytes would have: zero detection for free."""
        zid = self._zero_ids.get(length)
        if zid is None:
            zid = self._zero_ids[length] = self.chunk_id(bytes(length))
        return zid

    def encode(self, key: str, body: bytes | bytearray | memoryview, *, compress: bool = True) -> bytes:
        ctx = self._ctx()
        plain: bytes
        if compress:
            packed = ctx.zc.compress(body)
            if len(packed) < len(body):
                plain = bytes((CODEC_ZSTD,)) + packed
            else:
                plain = bytes((CODEC_STORED,)) + bytes(body)
        else:
            plain = bytes((CODEC_STORED,)) + bytes(body)
        nonce = os.urandom(NONCE_LEN)
        sealed: bytes = ctx.aead.encrypt(nonce, plain, MAGIC + key.encode())
        return MAGIC + nonce + sealed

    def decode(self, key: str, blob: bytes, *, max_size: int = 1 << 31) -> bytes:
        """Plaintext body of ``blob`` stored under ``key``; Corrupt (naming key) otherwise."""
        if len(blob) < OVERHEAD or blob[:4] != MAGIC:
            raise Corrupt(f"object {key}: not a Statehold blob (bad magic or truncated)")
        ctx = self._ctx()
        try:
            plain: bytes = ctx.aead.decrypt(blob[4 : 4 + NONCE_LEN], blob[4 + NONCE_LEN :],
                                            MAGIC + key.encode())
        except InvalidTag:
            raise Corrupt(f"object {key}: authentication failed (modified, truncated or misplaced)") from None
        body = _body(key, plain, ctx.zd, max_size)
        return body if isinstance(body, bytes) else bytes(body)

    def decode_into(self, key: str, blob: bytes | memoryview, out: bytearray, *,
                    max_size: int = 1 << 31) -> memoryview:
        """:meth:`decode` without copies, for the restore's hot path: the blob is decrypted
        into ``out`` (at least ``len(blob)`` bytes, reused by the caller), and the result is
        a view of ``out`` (stored) or of the decompressed bytes (zstd). The view is valid
        until ``out`` is next used."""
        if len(blob) < OVERHEAD or bytes(blob[:4]) != MAGIC:
            raise Corrupt(f"object {key}: not a Statehold blob (bad magic or truncated)")
        ctx = self._ctx()
        n = len(blob) - OVERHEAD + 1  # the plaintext: codec byte + body
        plain = memoryview(out)[:n]
        try:
            ctx.aead.decrypt_into(blob[4 : 4 + NONCE_LEN], blob[4 + NONCE_LEN :], MAGIC + key.encode(), plain)
        except InvalidTag:
            raise Corrupt(f"object {key}: authentication failed (modified, truncated or misplaced)") from None
        body = _body(key, plain, ctx.zd, max_size)
        return body if isinstance(body, memoryview) else memoryview(body)


def _body(key: str, plain: bytes | memoryview, zd: zstandard.ZstdDecompressor,
          max_size: int) -> bytes | memoryview:
    """The body of a decrypted blob ``plain`` (codec byte + body), by its codec: a slice of
    ``plain`` (stored; the caller's type, so no copy) or the decompressed bytes (zstd)."""
    codec = plain[0]
    if codec == CODEC_STORED:
        return plain[1:]
    if codec == CODEC_ZSTD:
        try:
            out: bytes = zd.decompress(plain[1:], max_output_size=max_size)
            return out
        except zstandard.ZstdError as exc:
            raise Corrupt(f"object {key}: zstd frame does not decode: {exc}") from exc
    raise Corrupt(f"object {key}: unknown codec {codec}")
