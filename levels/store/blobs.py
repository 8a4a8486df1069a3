"""The blob store seam: content-addressed bytes, in a local directory (S3 in s3.py).

`BlobStore` is what the levels may ask of a blob store. A key is the SHA-256 hex digest of
the bytes, so identical content is one blob: whoever deletes decides from the metadata
that no other record still names the key (levels/states.py). A key is checked to be a hex
digest before it becomes a path or an object name, since it comes from the metadata store,
which a damaged or edited record can hold anything in. Sealing (levels/store/sealed.py)
wraps a store; a store itself keeps bytes exactly as given.

Puts hash and sync (up to the largest checkpoint, 1 GiB): call them from a worker thread,
never from trio's. A blob too large to hold in memory (a 28-qubit state is 4 GiB) is
written in parts through a `BlobWriter`: `writer_for(store)` gives the store's own
(`DirectoryBlobStore.writer`: a temporary file hashed as it grows) or, for a store
without one, a writer that joins the parts and makes one `put` at the end.
"""

import concurrent.futures
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from levels.errors import Corrupt, NoSpace, NotFound

_KEY = re.compile(r"[0-9a-f]{64}")
# Space a put leaves free: the metadata commit that names the blob comes after it, and
# where both share a disk it must still fit.
RESERVE = 8 << 20
CHECK_EVERY = 64 << 20  # a parted write checks free space for this much at a time
# A part at least this large is hashed on a hasher thread while the file write runs (both
# release the GIL); smaller ones are hashed in line, cheaper than the hand-off.
HASH_ASIDE = 256 << 10
# A parted write asks the kernel to start writing its file back every this many bytes, so
# that the fsync at commit waits for the last few only (a 113 MB checkpoint's fsync took
# 49 ms, a fifth of the checkpoint, with the pipeline idle; 4.6 ms so).
WRITEBACK_EVERY = 8 << 20
SYNC_FILE_RANGE_WRITE = 2  # fcntl.h
# A blob's bytes past this offset bypass the page cache (O_DIRECT) both ways. A commit
# syncs its blob anyway, so caching a large blob only buys a repeated read, for a copy
# of every byte and the memory it evicts. On the development VM, whose fresh pages each
# cost the host a fault, 4 GiB written through the cache took 5-10 s of system CPU
# against 0.3 s direct, and read cold through it 2.6-8 s against 0.3 s (its disk moves
# 1.1 GB/s either way, faster than a seal or unseal). Smaller blobs (a 24-qubit
# checkpoint's) stay wholly cached.
DIRECT_FROM = 256 << 20
DIRECT_BLOCK = 4096  # O_DIRECT's alignment of offsets, lengths and buffers
DIRECT_STAGE = 8 << 20  # a direct write's staging buffer: one write() each
# Each writer has at most one part hashing at a time, so a pool keeps each one's order.
_HASHERS = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="qfs-blob-hasher")


def is_key(key: object) -> bool:
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def check_key(key: str) -> str:
    if not is_key(key):
        raise Corrupt(f"blob key {key!r} is not a SHA-256 hex digest: the metadata "
                      "record was damaged or edited (qfsmount --check reports it)")
    return key


class BlobStore(Protocol):
    """Content-addressed bytes. `put` returns only once the blob is durable (the metadata
    commit naming it follows, and must never name a missing blob) and is all or nothing:
    a crash leaves the whole blob or none. Every method but `list` refuses a key that is
    not a hex digest with Corrupt; `get` and `get_range` raise NotFound for a missing blob;
    a full store raises NoSpace."""

    def put(self, data: bytes) -> str: ...
    def get(self, key: str) -> bytes: ...
    def get_range(self, key: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset` (fewer at the end of the blob), as an HTTP
        range or pread gives them."""
    def delete(self, key: str) -> None:
        """Removes the blob; a missing one is no error (a repair may have gone first)."""
    def list(self) -> list[str]: ...


class BlobWriter(Protocol):
    """One blob written in parts: `commit` makes it durable and names it (as `put`),
    `abort` drops what was written. `size` is the bytes written so far."""

    size: int

    def write(self, data: bytes) -> None: ...
    def read(self, offset: int, size: int) -> bytes:
        """Written bytes read back before commit (an import whose format is chosen
        after its chunks are sealed), as get_range reads them."""
    def commit(self) -> str: ...
    def abort(self) -> None: ...


class JoinedWriter:
    """The parts kept in memory and put as one blob: for a store with no writer of its
    own (S3's single PUT), so the parted path works on every store."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(bytes(data))
        self.size += len(data)

    def read(self, offset: int, size: int) -> bytes:
        if len(self._parts) > 1:
            self._parts = [b"".join(self._parts)]  # once: a read back reads it all
        return self._parts[0][offset : offset + size] if self._parts else b""

    def commit(self) -> str:
        key = self._store.put(b"".join(self._parts))
        self._parts.clear()
        return key

    def abort(self) -> None:
        self._parts.clear()


def writer_for(store: object) -> BlobWriter:
    """The store's own writer, or one that joins the parts into a single put."""
    make = getattr(store, "writer", None)
    return make() if make is not None else JoinedWriter(store)  # type: ignore[arg-type]


def _writeback_starter() -> Callable[[int, int, int], object]:
    """sync_file_range(fd, offset, size, SYNC_FILE_RANGE_WRITE) where libc has it: starts
    writeback without waiting for it. Only a head start: commit's fsync is what makes a
    blob durable. The WRITE flag alone, because waiting (WAIT_BEFORE/AFTER) would consume
    the file's writeback error, which that fsync must still report."""
    function = getattr(ctypes.CDLL(None), "sync_file_range", None)
    if function is None:
        return lambda fd, offset, size: None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return lambda fd, offset, size: function(fd, offset, size, SYNC_FILE_RANGE_WRITE)


_start_writeback = _writeback_starter()


def _check_space(root: Path, size: int) -> int:
    """The bytes that fit beside the RESERVE kept for the metadata: ENOSPC if `size` does
    not."""
    free = os.statvfs(root)
    room = free.f_bavail * free.f_frsize - RESERVE
    if room < size:
        raise OSError(errno.ENOSPC, f"{size} bytes do not fit, with "
                      f"{RESERVE >> 20} MiB kept for the metadata")
    return room


def _drop_leftovers(root: Path) -> None:
    """Delete the temporary files of writers that died (a crash in a 4 GiB checkpoint
    would otherwise keep its partial blob forever): `.<name>.<pid>.tmp`, pid not alive."""
    for temp in [*root.glob(".*.tmp"), *root.glob("??/.*.tmp")]:
        pid = temp.name.rsplit(".", 2)[-2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            temp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def _no_space(exc: OSError) -> NoSpace | OSError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the blob store is full: {exc.strerror}")
    return exc


class DirectoryBlobStore:
    """Blobs as files `<root>/<key[:2]>/<key>`: written to a temporary file, fsynced and
    renamed into place, the directory synced so that the rename lasts too."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)
        _drop_leftovers(root)

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)[:2] / key

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if path.exists():
            return key
        temp = path.with_name(f".{key}.{os.getpid()}.tmp")
        try:
            _check_space(self._root, len(data))
            path.parent.mkdir(exist_ok=True)
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._place(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise _no_space(exc) from exc
        return key

    def _place(self, temp: Path, path: Path) -> None:
        """Rename a synced temporary file into place and sync its directory."""
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def writer(self) -> "DirectoryBlobWriter":
        return DirectoryBlobWriter(self)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {key} is missing from the store") from None

    def get_range(self, key: str, offset: int, size: int) -> bytes:
        direct = offset >= DIRECT_FROM
        try:
            fd = _open_maybe_direct(self._path(key), os.O_RDONLY, direct)
        except FileNotFoundError:
            raise NotFound(f"blob {key} is missing from the store") from None
        try:
            return _read_direct(fd, offset, size) if direct else os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self) -> list[str]:
        return sorted(p.name for p in self._root.glob("??/*") if is_key(p.name))


class DirectoryBlobWriter:
    """A blob written in parts to a temporary file in the store's root, hashed as it
    grows; `commit` syncs it and renames it to its key (or drops it when that blob is
    already there). Free space is checked before each part, as `put` does.

    The kernel is asked to write the file back as it grows (WRITEBACK_EVERY), and bytes
    past DIRECT_FROM go to the device directly (`_DirectTail`). A large part is hashed on
    a hasher thread while it is written: a checkpoint's parts come through one writer in
    order, so writing then hashing each would make this the slowest stage of the seal
    (write and hash were 23 + 57 ms of a 24-qubit complex64 checkpoint, and the write
    281 ms into fresh page cache)."""

    def __init__(self, store: DirectoryBlobStore) -> None:
        self._store = store
        self._temp = store._root / f".stage-{uuid.uuid4().hex}.{os.getpid()}.tmp"
        self._file = open(self._temp, "w+b")  # noqa: SIM115 (closed by commit or abort)
        self._hash = hashlib.sha256()
        self._hashing: concurrent.futures.Future | None = None  # the part being hashed
        self.size = 0
        self._written_back = 0  # bytes whose writeback has been started
        self._room = 0  # bytes known to fit since the last statvfs
        self._direct: _DirectTail | None = None  # the file from DIRECT_FROM on

    def write(self, data: bytes) -> None:
        self._hashed()
        self._hash_part(data)
        try:
            if len(data) > self._room:  # one statvfs per 64 MiB at most, not per part
                room = _check_space(self._store._root, len(data))
                self._room = min(room, max(len(data), CHECK_EVERY))
            self._room -= len(data)
            cached = min(len(data), max(0, DIRECT_FROM - self.size))
            if cached:
                self._write_cached(data if cached == len(data) else memoryview(data)[:cached])
            if cached < len(data):
                if self._direct is None:
                    self._file.flush()
                    self._direct = _DirectTail(self._temp, DIRECT_FROM)
                self._direct.write(memoryview(data)[cached:])
            self.size += len(data)
        except OSError as exc:
            self.abort()
            raise _no_space(exc) from exc

    def _write_cached(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        end = self.size + len(data)
        if end - self._written_back >= WRITEBACK_EVERY:
            self._file.flush()
            _start_writeback(self._file.fileno(), self._written_back, end - self._written_back)
            self._written_back = end

    def _hash_part(self, data: bytes) -> None:
        """Hash a large part on a hasher thread, anything else here. Only `bytes` go
        aside: a buffer its caller may reuse once write returns must be hashed now."""
        if type(data) is bytes and len(data) >= HASH_ASIDE:
            try:
                self._hashing = _HASHERS.submit(self._hash.update, data)
                return
            except RuntimeError:  # the interpreter is exiting: no new threads
                pass
        self._hash.update(data)

    def _hashed(self) -> None:
        """Wait for the part being hashed, so that parts are hashed in order."""
        hashing, self._hashing = self._hashing, None
        if hashing is not None:
            hashing.result()

    def read(self, offset: int, size: int) -> bytes:
        self._file.flush()
        if self._direct is not None:
            return self._direct.read(self._file.fileno(), offset, size)
        return os.pread(self._file.fileno(), size, offset)

    def commit(self) -> str:
        self._hashed()
        key = self._hash.hexdigest()
        path = self._store._path(key)
        try:
            self._file.flush()
            if path.exists():
                self.abort()
                return key
            if self._direct is not None:
                self._direct.finish()
            os.fsync(self._file.fileno())
            self._file.close()
            path.parent.mkdir(exist_ok=True)
            self._store._place(self._temp, path)
        except OSError as exc:
            self.abort()
            raise _no_space(exc) from exc
        return key

    def abort(self) -> None:
        try:
            self._hashed()
        finally:
            try:
                if self._direct is not None:
                    self._direct.close()
            finally:
                self._file.close()
                self._temp.unlink(missing_ok=True)


def _open_maybe_direct(path: Path, flags: int, direct: bool) -> int:
    """`path` opened with O_DIRECT when asked and the file system takes it (tmpfs before
    Linux 6.6 and some others refuse it at open with EINVAL), else without."""
    if direct:
        try:
            return os.open(path, flags | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags)


def _transfer(fd: int, transfer: Callable[[], int]) -> int:
    """An aligned transfer on a descriptor opened with O_DIRECT, done again without it
    where the file system took the flag at open but refuses the transfer (EINVAL)."""
    try:
        return transfer()
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    return transfer()


_aligned = threading.local()  # each reading thread's buffer for direct reads


def _aligned_buffer(size: int) -> memoryview:
    """A page-aligned buffer (an anonymous map) of at least `size` bytes, kept per thread:
    a restore reads chunk after chunk of about the same size."""
    buffer = getattr(_aligned, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = mmap.mmap(-1, _round_up(size, 1 << 20))
        _aligned.buffer = buffer
    return memoryview(buffer)


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _read_direct(fd: int, offset: int, size: int) -> bytes:
    """pread of an O_DIRECT descriptor: the aligned blocks around the range, then the
    range's bytes out of them (fewer at the end of the file)."""
    if size <= 0:
        return b""
    start = offset - offset % DIRECT_BLOCK
    span = _round_up(offset + size, DIRECT_BLOCK) - start
    buffer = _aligned_buffer(span)
    got = _transfer(fd, lambda: os.preadv(fd, [buffer[:span]], start))
    skip = offset - start
    return bytes(buffer[skip : max(skip, min(got, skip + size))])


class _DirectTail:
    """Writes a file from block-aligned offset `start` on with O_DIRECT, through a
    page-aligned staging buffer written out whole (the last one padded to a block, the
    file then cut to its true size). Reads of the bytes written so far (an import read
    back before its commit) see the staged ones too, and leave the tail uncached."""

    def __init__(self, path: Path, start: int) -> None:
        self._stage = mmap.mmap(-1, DIRECT_STAGE)
        self._view = memoryview(self._stage)
        self._fd = _open_maybe_direct(path, os.O_RDWR, True)
        self._staged = 0
        self._start = start
        self._flushed = start  # the file's offset of the stage's first byte

    def write(self, data: memoryview) -> None:
        while data:
            n = min(len(data), DIRECT_STAGE - self._staged)
            self._view[self._staged : self._staged + n] = data[:n]
            self._staged += n
            data = data[n:]
            if self._staged == DIRECT_STAGE:
                self._drain(DIRECT_STAGE)

    def _drain(self, length: int) -> None:
        # Released even when the write fails: the error's traceback holds this frame, and
        # a slice still alive would keep close() from unmapping the stage.
        with self._view[:length] as block:
            written = _transfer(self._fd, lambda: os.pwrite(self._fd, block, self._flushed))
        if written != length:  # a regular file's write stops short only when it is full
            raise OSError(errno.ENOSPC, "the disk filled during a write")
        self._flushed += length
        self._staged = 0

    def read(self, cached: int, offset: int, size: int) -> bytes:
        """Bytes written so far: below the tail's start through `cached` (a descriptor
        without O_DIRECT), then the tail's on the device, then the staged ones."""
        end = min(offset + size, self._flushed + self._staged)
        pieces = []
        if offset < self._start:
            pieces.append(os.pread(cached, min(end, self._start) - offset, offset))
        if offset < self._flushed and end > self._start:
            first = max(offset, self._start)
            pieces.append(_read_direct(self._fd, first, min(end, self._flushed) - first))
        first = max(offset, self._flushed)
        pieces.append(bytes(self._view[first - self._flushed : max(0, end - self._flushed)]))
        return b"".join(pieces)

    def finish(self) -> None:
        """Write out what is staged and cut the file to the bytes written."""
        end = self._flushed + self._staged
        if self._staged:
            padded = _round_up(self._staged, DIRECT_BLOCK)
            self._view[self._staged : padded] = bytes(padded - self._staged)
            self._drain(padded)
        os.ftruncate(self._fd, end)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._view.release()
            self._stage.close()
