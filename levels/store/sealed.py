"""zstd compression and AES-256-GCM encryption of state payloads, as a store that wraps
another blob store (as s3ql's comprenc backend wraps its backends).

Layout of a sealed blob: magic b"QFS1", one flags byte (1 = encrypted, 2 = zstd), then
for an encrypted blob a 12-byte fresh random nonce and the GCM ciphertext+tag of the
(compressed) payload. The associated data binds the blob to its checkpoint id and
metadata, so a blob swapped between checkpoints, truncated or altered, or opened with
another key, fails authentication: the caller gets Corrupt, never wrongly decoded bytes.
The key is read from a 0600 file and never logged.
"""

import dataclasses
import os
import stat
from pathlib import Path

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from levels.errors import Corrupt, Invalid
from levels.store.blobs import BlobStore, BlobWriter, writer_for
from levels.store.chunked import (
    AUTH_FAILED,
    COMPRESSED,
    ENCRYPTED,
    NONCE_BYTES,
    ChunkedBlob,
    ChunkSealer,
)

MAGIC = b"QFS1"  # the flags and nonce as chunked.py's (QFS2)
WINDOW_LOG_MAX = 30  # 1 GiB: the largest checkpoint plus its parent


def load_or_create_key(path: Path) -> bytes:
    """The 32-byte key in `path`, created 0600 on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(AESGCM.generate_key(bit_length=256))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise Invalid(f"key file {path} is readable by others (mode {oct(mode)}); chmod 600")
    key = path.read_bytes()
    if len(key) != 32:
        raise Invalid(f"key file {path} must hold 32 bytes, not {len(key)}")
    return key


class Sealer:
    """The codec: bytes in, sealed bytes out (the key canary seals with it directly)."""

    def __init__(self, key: bytes, threads: int) -> None:
        self._key = key
        self._aead = AESGCM(key)
        self.threads = threads  # zstd threads of one blob, or chunks sealed at once

    def chunks(self, identity: bytes, count: int, encrypt: bool,
               level: int | None) -> ChunkSealer:
        """A sealer of one chunked blob (levels/store/chunked.py) under this key."""
        return ChunkSealer(self._key, identity, count, encrypt, level)

    def chunked(self, get_range, size: int, identity: bytes, aad: bytes,
                index_sha256: str | None) -> ChunkedBlob:
        return ChunkedBlob(self._key, get_range, size, identity, aad, index_sha256)

    def seal(self, payload: bytes, aad: bytes, encrypt: bool, dictionary: bytes | None = None,
             level: int | None = 3) -> bytes:
        """level None stores the payload uncompressed (for data zstd cannot shrink)."""
        flags = 0
        body = payload
        if level is not None:
            params = None
            if dictionary is not None:
                # The default window only reaches the dictionary's tail: above ~2 MiB an
                # incremental checkpoint saved nothing. Size the window to parent + child and
                # let long-distance matching find the unchanged runs.
                window = max(20, min(WINDOW_LOG_MAX, (len(dictionary) + len(payload))
                                     .bit_length()))
                # Single-threaded: zstd's worker threads do not see the whole dictionary.
                tables = min(window - 1, 24)
                params = zstandard.ZstdCompressionParameters.from_level(
                    level, window_log=window, enable_ldm=True, hash_log=tables,
                    chain_log=tables, threads=0)
            compressor = zstandard.ZstdCompressor(
                level=level, dict_data=_dictionary(dictionary), compression_params=params) \
                if params else zstandard.ZstdCompressor(level=level, threads=self.threads)
            body = compressor.compress(payload)
            flags |= COMPRESSED
        if not encrypt:
            return MAGIC + bytes([flags]) + body
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + bytes([flags | ENCRYPTED]) + nonce + self._aead.encrypt(nonce, body, aad)

    def unseal(self, blob: bytes, aad: bytes, dictionary: bytes | None = None) -> bytes:
        if len(blob) < 5 or blob[:4] != MAGIC:
            raise Corrupt("not a qfs state blob (bad magic)")
        flags, body = blob[4], blob[5:]
        if flags & ENCRYPTED:
            nonce, ciphertext = body[:NONCE_BYTES], body[NONCE_BYTES:]
            try:
                body = self._aead.decrypt(nonce, ciphertext, aad)
            except InvalidTag:
                raise Corrupt(AUTH_FAILED) from None
        if not flags & COMPRESSED:
            return body
        try:
            return zstandard.ZstdDecompressor(
                dict_data=_dictionary(dictionary), max_window_size=1 << WINDOW_LOG_MAX,
            ).decompress(body)
        except zstandard.ZstdError as exc:
            raise Corrupt(f"cannot decompress the blob: {exc}") from exc


def _dictionary(raw: bytes | None):
    if raw is None:
        return None
    return zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


@dataclasses.dataclass(frozen=True)
class Binding:
    """What a sealed blob is bound to, given again to open it: the associated data (its
    checkpoint's identity) and, for an incremental checkpoint, the parent's payload that
    is its compression dictionary."""

    aad: bytes
    dictionary: bytes | None = None


class SealedBlobStore:
    """A blob store over `inner`: sealing on the way in (`seal`, then `put`), opening on
    the way out (`open`); ranges, deletes and listings are of the bytes exactly as kept.

    Sealing is a step of its own, not part of `put`: the caller must know the stored size
    before it commits the metadata, and seals (seconds for a large state) outside the lock
    under which it puts a shared blob and records it. Ranges are of the stored bytes: GCM
    authenticates only a whole blob."""

    def __init__(self, inner: BlobStore, sealer: Sealer) -> None:
        self._inner = inner
        self._sealer = sealer

    def seal(self, data: bytes, binding: Binding, encrypt: bool, level: int | None) -> bytes:
        """The blob `put` will keep for `data` (slow: call from a worker thread)."""
        return self._sealer.seal(data, binding.aad, encrypt, binding.dictionary, level)

    def open(self, key: str, binding: Binding) -> bytes:
        """The data sealed under `key`, or Corrupt if it is not what `binding` sealed."""
        return self._sealer.unseal(self._inner.get(key), binding.aad, binding.dictionary)

    @property
    def threads(self) -> int:
        return self._sealer.threads

    def put(self, blob: bytes) -> str:
        return self._inner.put(blob)

    def chunk_sealer(self, identity: bytes, count: int, encrypt: bool,
                     level: int | None) -> ChunkSealer:
        """Seals a blob chunk by chunk (a large state), written through `writer()`."""
        return self._sealer.chunks(identity, count, encrypt, level)

    def writer(self) -> BlobWriter:
        """A blob written in parts to the inner store (its own writer, or one put)."""
        return writer_for(self._inner)

    def open_chunked(self, key: str, size: int, identity: bytes, aad: bytes,
                     index_sha256: str | None) -> ChunkedBlob:
        """A chunked blob read by ranges of the inner store; each chunk is authenticated
        as it is read."""
        return self._sealer.chunked(lambda offset, n: self._inner.get_range(key, offset, n),
                                    size, identity, aad, index_sha256)

    def open_staged(self, writer: BlobWriter, identity: bytes, aad: bytes,
                    index_sha256: str | None) -> ChunkedBlob:
        """A chunked blob still being written, read back before it is committed."""
        return self._sealer.chunked(writer.read, writer.size, identity, aad, index_sha256)

    def get_range(self, key: str, offset: int, size: int) -> bytes:
        return self._inner.get_range(key, offset, size)

    def delete(self, key: str) -> None:
        self._inner.delete(key)

    def list(self) -> list[str]:
        return self._inner.list()
