"""Chunked authenticated sealing: a large payload sealed as independent chunks, so that
it is sealed on several threads, written and read in pieces (bounded memory, ranged
reads), while truncation, reordering and swaps are still detected.

Layout of a chunked blob (magic b"QFS2"; the single-blob format b"QFS1" stays readable
through levels/store/sealed.py):

    b"QFS2" flags(1)                     flags: 1 = encrypted, 2 = zstd
    chunk 0 .. chunk N-1                 encrypted: 12-byte nonce + GCM ciphertext + tag;
                                         else the (compressed) bytes
    index                                encrypted: nonce + GCM of the JSON; else the JSON
    index length (8, little-endian) b"QFS2"

Chunk i is sealed with associated data `identity | "chunk" | i | N`: a chunk moved to
another place, another blob or another checkpoint fails authentication. The index lists
each chunk's offset, length and tag (the GCM tag, or the SHA-256 of the stored chunk when
not encrypted) with the caller's `info`, and is sealed with the whole binding (identity
plus what is known only at the end, such as the decoded state's hash), so a blob cut
short, with chunks dropped, or with its index swapped, fails too. An unencrypted index is
checked against the SHA-256 the metadata record keeps of it (`index_sha256`).
"""

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from levels.errors import Corrupt

MAGIC = b"QFS2"
ENCRYPTED = 1
COMPRESSED = 2
NONCE_BYTES = 12
TAG_BYTES = 16
TRAILER = struct.Struct("<Q4s")  # index length, magic
HEAD_BYTES = len(MAGIC) + 1
AUTH_FAILED = ("authentication failed: the blob was altered, swapped or truncated, or "
               "the key is not the one it was sealed with")

GetRange = Callable[[int, int], bytes]  # (offset, size) -> bytes of the stored blob


def is_chunked(head: bytes) -> bool:
    return head[:4] == MAGIC


def _chunk_aad(identity: bytes, index: int, count: int) -> bytes:
    return identity + b"|chunk|" + struct.pack("<QQ", index, count)


class ChunkSealer:
    """Seals the chunks of one blob; `seal` may run on several threads at once."""

    def __init__(self, key: bytes, identity: bytes, count: int, encrypt: bool,
                 level: int | None) -> None:
        self._aead = AESGCM(key)
        self._identity = identity
        self.count = count
        self.encrypt = encrypt
        self.level = level

    @property
    def head(self) -> bytes:
        flags = (ENCRYPTED if self.encrypt else 0) | (COMPRESSED if self.level is not None else 0)
        return MAGIC + bytes([flags])

    def seal(self, index: int, data: bytes | memoryview) -> tuple[bytes, str]:
        """(stored bytes, tag) of chunk `index`: compressed, then encrypted."""
        if self.level is not None:
            data = zstandard.ZstdCompressor(level=self.level).compress(data)
        if not self.encrypt:
            stored = bytes(data)
            return stored, hashlib.sha256(stored).hexdigest()
        nonce = os.urandom(NONCE_BYTES)
        body = self._aead.encrypt(nonce, data, _chunk_aad(self._identity, index, self.count))
        return nonce + body, body[-TAG_BYTES:].hex()

    def index(self, chunks: list[tuple[int, int, str]], info: dict[str, Any],
              aad: bytes) -> tuple[bytes, str]:
        """The index and trailer that close the blob (chunks: offset, length, tag), and
        the SHA-256 of the stored index (the record of an unencrypted blob keeps it)."""
        document = json.dumps({"count": self.count, "chunks": chunks, "info": info},
                              sort_keys=True).encode()
        if self.encrypt:
            nonce = os.urandom(NONCE_BYTES)
            document = nonce + self._aead.encrypt(nonce, document, aad + b"|index")
        return (document + TRAILER.pack(len(document), MAGIC),
                hashlib.sha256(document).hexdigest())


@dataclasses.dataclass(frozen=True)
class ChunkIndex:
    encrypted: bool
    compressed: bool
    chunks: list[tuple[int, int, str]]
    info: dict[str, Any]
    digest: str  # SHA-256 of the stored index: what a record of an unencrypted blob keeps


class ChunkedBlob:
    """Reads a chunked blob by ranges: the index once, then any chunk on its own."""

    def __init__(self, key: bytes, get_range: GetRange, size: int, identity: bytes,
                 aad: bytes, index_sha256: str | None) -> None:
        self._aead = AESGCM(key)
        self._get_range = get_range
        self._identity = identity
        self.index = self._read_index(size, aad, index_sha256)

    def _get(self, offset: int, size: int) -> bytes:
        data = self._get_range(offset, size)
        if len(data) != size:
            raise Corrupt("the chunked blob is cut short")
        return data

    def _read_index(self, size: int, aad: bytes, expected: str | None) -> ChunkIndex:
        if size < HEAD_BYTES + TRAILER.size:
            raise Corrupt("the chunked blob is cut short (no index)")
        head = self._get(0, HEAD_BYTES)
        length, magic = TRAILER.unpack(self._get(size - TRAILER.size, TRAILER.size))
        if not is_chunked(head) or magic != MAGIC or length > size - HEAD_BYTES - TRAILER.size:
            raise Corrupt("not a chunked qfs blob, or cut short (its trailer is missing)")
        stored = self._get(size - TRAILER.size - length, length)
        digest = hashlib.sha256(stored).hexdigest()
        flags = head[4]
        if flags & ENCRYPTED:
            try:
                stored = self._aead.decrypt(stored[:NONCE_BYTES], stored[NONCE_BYTES:],
                                            aad + b"|index")
            except InvalidTag:
                raise Corrupt(AUTH_FAILED) from None
        elif expected is None or digest != expected:
            raise Corrupt("the blob's chunk index is not the one its checkpoint recorded: "
                          "the blob was altered, swapped or truncated")
        try:
            document = json.loads(stored)
            chunks = [(int(o), int(n), str(t)) for o, n, t in document["chunks"]]
            info = dict(document["info"])
        except (ValueError, KeyError, TypeError) as exc:
            raise Corrupt(f"the blob's chunk index is malformed: {exc}") from exc
        if document.get("count") != len(chunks):
            raise Corrupt("the blob's chunk index does not list every chunk")
        return ChunkIndex(bool(flags & ENCRYPTED), bool(flags & COMPRESSED), chunks, info,
                          digest)

    def chunk(self, index: int, max_size: int) -> bytes:
        """Chunk `index` authenticated and decompressed (at most `max_size` bytes)."""
        offset, length, tag = self.index.chunks[index]
        stored = self._get(offset, length)
        if self.index.encrypted:
            try:
                body = self._aead.decrypt(
                    stored[:NONCE_BYTES], stored[NONCE_BYTES:],
                    _chunk_aad(self._identity, index, len(self.index.chunks)))
            except InvalidTag:
                raise Corrupt(AUTH_FAILED) from None
            if stored[-TAG_BYTES:].hex() != tag:
                raise Corrupt(f"chunk {index} is not the one the index lists")
        else:
            if hashlib.sha256(stored).hexdigest() != tag:
                raise Corrupt(f"chunk {index} was altered or moved")
            body = stored
        if not self.index.compressed:
            return body
        try:
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=max_size)
        except zstandard.ZstdError as exc:
            raise Corrupt(f"cannot decompress chunk {index}: {exc}") from exc
