"""The blob store seam: content-addressed bytes, in a local directory (S3 to follow).

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
import hashlib
import os
import re
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


def _check_space(root: Path, size: int) -> None:
    free = os.statvfs(root)
    if free.f_bavail * free.f_frsize < size + RESERVE:
        raise OSError(errno.ENOSPC, f"{size} bytes do not fit, with "
                      f"{RESERVE >> 20} MiB kept for the metadata")


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
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"blob {key} is missing from the store") from None
        try:
            return os.pread(fd, size, offset)
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

    The kernel is asked to write the file back as it grows (WRITEBACK_EVERY). A large
    part is hashed on a hasher thread while it is written: a checkpoint's parts
    come through one writer in order, so writing then hashing each would make this the
    slowest stage of the seal (write and hash were 23 + 57 ms of a 24-qubit complex64
    checkpoint, and the write 281 ms into fresh page cache)."""

    def __init__(self, store: DirectoryBlobStore) -> None:
        self._store = store
        self._temp = store._root / f".stage-{uuid.uuid4().hex}.{os.getpid()}.tmp"
        self._file = open(self._temp, "w+b")  # noqa: SIM115 (closed by commit or abort)
        self._hash = hashlib.sha256()
        self._hashing: concurrent.futures.Future | None = None  # the part being hashed
        self.size = 0
        self._written_back = 0  # bytes whose writeback has been started
        self._room = 0  # bytes known to fit since the last statvfs

    def write(self, data: bytes) -> None:
        self._hashed()
        self._hash_part(data)
        try:
            if len(data) > self._room:  # one statvfs per 64 MiB, not per part
                self._room = max(len(data), CHECK_EVERY)
                _check_space(self._store._root, self._room)
            self._room -= len(data)
            self._file.write(data)
            self.size += len(data)
            if self.size - self._written_back >= WRITEBACK_EVERY:
                self._file.flush()
                _start_writeback(self._file.fileno(), self._written_back,
                                 self.size - self._written_back)
                self._written_back = self.size
        except OSError as exc:
            self.abort()
            raise _no_space(exc) from exc

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
            self._file.close()
            self._temp.unlink(missing_ok=True)
