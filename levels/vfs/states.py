"""The /states tree (Level 2, StateStore): one directory per checkpoint.

    /states/<ckpt>/meta.json            format, fidelity, sizes, times (read-only)
    /states/<ckpt>/statevector.npy      the decoded state (density_matrix.npy for mixed
                                        formats), readable by np.load from the mount
    /states/<ckpt>/blob                 the stored bytes exactly as kept
    /states/<ckpt>/lineage              this checkpoint and its parents back to the first
                                        full one, one per line
    setfattr -n user.qfs.pinned -v 1 /states/<ckpt>   keeps it beyond its retention
    mkdir /states/x; cp psi.npy /states/x/statevector.npy   imports a state

/states is 1777, like /tmp: anyone may import, and only the owner of a checkpoint (or root)
may remove it. A checkpoint's directory and files belong to its owner; the blob and the
decoded state are 0400, since a state is its owner's data; meta.json is 0444.
"""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import trio

from levels import densestate, native
from levels.errors import Invalid, NoAttribute, NotFound, QfsError, ReadOnly
from levels.states import Prepared, Request, meta_json, npy_size, owner_of
from levels.vfs.entry import (
    FILE,
    LARGE_FILE_IO,
    STARTED_NS,
    Attrs,
    Constant,
    Content,
    Dir,
    Entry,
    Names,
    Path,
    directory,
    immutable_file,
)
from levels.vfs.importstream import ImportStream

if TYPE_CHECKING:
    from levels.fabric import Fabric

STATES = "states"
IMPORT_FILES = {"statevector.npy": 1, "density_matrix.npy": 2}  # name -> array rank
NPY_MAGIC = b"\x93NUMPY"
NPY_HEADER_MAX = 10_000 + 12  # numpy's own limit on a header, plus magic and length
_IMPORT_REFUSAL = "states are imported into a new directory: mkdir /states/x first"
PINNED = "user.qfs.pinned"  # on /states/<ckpt>: "1" keeps it (and its parents) past retention


class StatesDir(Dir):
    """/states (1777): mkdir makes an empty checkpoint directory to import into, or for its
    maker's task to `checkpoint` into (EEXIST if taken); rmdir removes a checkpoint
    (EACCES unless its owner or root, EBUSY while referenced)."""

    def __init__(self, fabric: Fabric, path: Path) -> None:
        super().__init__(fabric, path, directory(STARTED_NS, perm=0o1777, timeout=0.0))

    async def lookup(self, name: str) -> Entry:
        store = self.fabric.states
        try:
            meta = store.get(name)
        except NotFound:  # a directory made to import into, if any: a checkpoint fills it
            pending = store.pending.get(name)
            if pending is None:
                raise
            attrs = directory(pending.made_ns, timeout=0.0)
            attrs.uid = pending.owner
            return PendingDir(self.fabric, self.child(name), attrs)
        attrs = directory(meta["created_ns"], timeout=0.0)
        attrs.uid = owner_of(meta)
        return CheckpointDir(self.fabric, self.child(name), attrs, meta)

    def names(self) -> Names:
        store = self.fabric.states
        return sorted({*store.names(), *store.pending})

    async def mkdir(self, name: str, uid: int) -> None:
        # off trio's thread: it may wait for a commit taking the name, or delete an expired
        # checkpoint whose name it is
        await trio.to_thread.run_sync(self.fabric.states.make_pending, name, uid)

    async def rmdir(self, name: str) -> None:
        # off trio's thread: it may wait for a checkpoint putting its blob
        try:
            await trio.to_thread.run_sync(self.fabric.states.remove_dir, name)
        finally:  # refused, the files rm -r unlinked show again; done, nothing is left
            unlinked = self.fabric.states.unlinked
            for key in [key for key in unlinked if key[0] == name]:
                del unlinked[key]

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        raise ReadOnly(_IMPORT_REFUSAL)


class CheckpointDir(Dir):
    """/states/<ckpt>/: meta.json, blob and the decoded state. rm of a file deletes nothing,
    so that rm -r reaches the rmdir that removes the checkpoint, and hides the name until
    the directory is next listed: tar x, which unlinks what its O_EXCL create met, then
    meets the create's refusal rather than the same file again, forever."""

    def __init__(self, fabric: Fabric, path: Path, attrs: Attrs, meta: dict) -> None:
        super().__init__(fabric, path, attrs)
        self.meta = meta
        self._key = (meta["name"], meta["created_ns"])  # a later namesake hides nothing

    def names(self) -> Names:
        hidden = self.fabric.states.unlinked.get(self._key, ())
        return [name for name in ("blob", "lineage", "meta.json",
                                  f"{self.meta['decodes_to']}.npy") if name not in hidden]

    def lists_late(self) -> bool:
        return self._key in self.fabric.states.unlinked

    def listed(self) -> None:
        self.fabric.states.unlinked.pop(self._key, None)

    async def lookup(self, name: str) -> Entry:
        meta, owner, path = self.meta, self.attrs.uid, self.child(name)
        if name in self.fabric.states.unlinked.get(self._key, ()):
            raise NotFound(f"/{'/'.join(path)} was removed (it shows again once its "
                           f"directory is listed; rm -r the directory to delete)")
        if name == "meta.json":
            entry: Entry = Constant(self.fabric, path, meta_json(meta),
                                    Attrs(FILE, 0o444, meta["created_ns"]))
        elif name == "blob":
            entry = BlobFile(self.fabric, path, meta)
        elif name == "lineage":
            entry = Constant(self.fabric, path, self.fabric.states.lineage(meta["name"]),
                             Attrs(FILE, 0o444, meta["created_ns"]))
        elif name == f"{meta['decodes_to']}.npy":
            entry = StateFile(self.fabric, path, meta)
        else:
            raise NotFound("/".join(path))
        entry.attrs.uid = owner
        return entry

    async def remove_child(self, name: str) -> None:
        await self.lookup(name)
        self.fabric.states.unlinked.setdefault(self._key, set()).add(name)

    async def getxattr(self, name: str) -> bytes:
        if name != PINNED or not self.meta.get("pinned"):
            raise NoAttribute(name)
        return b"1"

    def listxattr(self) -> Names:
        return [PINNED] if self.meta.get("pinned") else []

    async def setxattr(self, name: str, value: bytes) -> None:
        if name != PINNED:
            await super().setxattr(name, value)
            return
        if value not in (b"0", b"1"):
            raise Invalid(f"{PINNED} is 1 (keep this checkpoint beyond its retention) or 0")
        self.fabric.states.pin(self.meta["name"], value == b"1")

    async def removexattr(self, name: str) -> None:
        await self.getxattr(name)
        self.fabric.states.pin(self.meta["name"], False)

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        raise ReadOnly(_IMPORT_REFUSAL)


class BlobFile(Entry):
    """blob: the stored bytes exactly as kept (zstd, AES-256-GCM), 0400, immutable."""

    def __init__(self, fabric: Fabric, path: Path, meta: dict) -> None:
        super().__init__(fabric, path, immutable_file(meta["stored_bytes"], meta["created_ns"],
                                                      0o400, LARGE_FILE_IO))
        self.name = path[1]

    async def open(self) -> Content:
        return await trio.to_thread.run_sync(self.fabric.states.blob, self.name, 0,
                                             self.attrs.size)


class StateFile(Entry):
    """statevector.npy (density_matrix.npy for mixed formats): the decoded state for
    np.load, 0400, immutable. open() is the hook for ranged reads: it returns the whole
    .npy (decoded by Qiskit in a worker, cached by checkpoint) or a RangeReader."""

    def __init__(self, fabric: Fabric, path: Path, meta: dict) -> None:
        name = path[1]
        super().__init__(fabric, path, immutable_file(
            npy_size(fabric.states.decoded_shape(name)), meta["created_ns"], 0o400,
            LARGE_FILE_IO))
        self.name = name

    async def open(self) -> Content:
        store = self.fabric.states
        # A chunked state vector is read by ranges: np.load(mmap_mode="r") decodes only
        # the chunks it touches (levels/densestate.py).
        reader = await trio.to_thread.run_sync(store.shared_reader, self.name)
        if reader is not None:
            return reader
        return await native.run_sync(store.npy, self.name)


class PendingDir(Dir):
    """A directory made by mkdir, holding no state yet: a .npy written into it imports it."""

    async def lookup(self, name: str) -> Entry:
        raise NotFound(f"{self.path[1]} holds no state yet: cp a .npy file in")

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        return ImportFile(self.fabric, self.child(name))


class ImportFile(Entry):
    """statevector.npy or density_matrix.npy written into a pending directory: imports it.

    np.save cannot see an error from close() (numpy's tofile writes through a duplicate of
    the descriptor and ignores the error of closing it), so what the .npy header decides
    (magic, a numeric dtype, the rank the file name asks for, a power-of-two shape,
    max_checkpoint_size_mb) fails the write() that completes the header (EINVAL, EFBIG),
    and close() gives the same refusal. The values (finite, normalised, Hermitian,
    positive, unit trace) are checked at close, when all of them are there. A state
    vector is sealed as it is written (levels/vfs/importstream.py) where
    StateStore.imports_stream says so; otherwise the handle holds the file until close."""

    readable = False
    writable = commits = True
    takes_buffer = True  # a state is read in place, not copied once more
    # Without it the kernel copied every byte into the file's page cache before sending
    # it (a 28-qubit import: 4 GiB of cache the import never reads; cp's system CPU
    # 2.2-5.5 s here, 0.9-1.1 s with it); with it the daemon reads the writer's pages.
    direct_io = True

    def __init__(self, fabric: Fabric, path: Path) -> None:
        rank = IMPORT_FILES.get(path[2])
        if rank is None:
            raise Invalid(f"import as {' or '.join(IMPORT_FILES)}, not {path[2]}")
        super().__init__(fabric, path, Attrs(FILE, 0o644, 0, entry_timeout=0.0,
                                                   io_size=LARGE_FILE_IO))
        self.rank = rank
        self._refused: QfsError | None = None
        self._header: NpyHeader | None = None

    def screen(self, data: bytearray) -> bool:
        try:
            self._header = _acceptable_header(self.fabric, self.path[2], self.rank, data)
        except QfsError as exc:
            self._refused = exc
            raise
        return self._header is not None

    def stream(self, data: bytearray, uid: int) -> ImportStream | None:
        """A state vector is sealed as it is written (StateStore.imports_stream), when its
        writer writes in order: a file made long first (a truncate before the header, as
        a preallocating writer does) is held until close, as before."""
        states, header = self.fabric.states, self._header
        if header is None or not states.imports_stream(self.rank, header.shape[0]):
            return None
        chunk_bytes = densestate.CHUNK_AMPLITUDES * header.dtype.itemsize
        if len(data) > header.size + chunk_bytes:
            return None
        name = self.path[1]
        checkpoint = states.begin_import(Request(name, owner=states.importer_of(name, uid)),
                                         header.shape[0])
        try:
            return ImportStream(checkpoint, data, header.size, header.dtype, header.shape[0],
                                functools.partial(self._choose_whole, uid), self._store)
        except BaseException:
            checkpoint.abort()
            raise

    async def commit(self, data: bytes, uid: int) -> None:
        if self._refused is not None:
            raise self._refused
        fabric, name, filename, rank = self.fabric, self.path[1], self.path[2], self.rank
        owner = fabric.states.importer_of(name, uid)

        def prepare():
            try:  # over the written bytes, not a copy: a state vector is sealed by chunks
                array = densestate.npy_array(data)
            except Exception as exc:
                raise Invalid(f"{filename} is not a .npy array: {exc}") from exc
            if array.ndim != rank:
                raise Invalid(f"{filename} must be a {rank}-D array, not {array.ndim}-D")
            return fabric.states.prepare(Request(name, owner=owner), array)

        await self._store(await native.run_sync(prepare))  # Qiskit measures the fidelity

    async def _choose_whole(self, uid: int, prepared: Prepared) -> Prepared:
        """An `auto` import its evidence left open, chosen for as a state held whole:
        the state is then in the daemon's memory, so it holds the importer's write budget
        meanwhile (ENOSPC over it, at close), as the file held until close would have."""
        budget = self.fabric.budget
        try:
            held = budget.reserve(uid, self.path, 0, prepared.meta["raw_bytes"], 0)
        except BaseException:
            await trio.to_thread.run_sync(prepared.abort)
            raise
        try:
            return await native.run_sync(self.fabric.states.choose_whole, prepared)
        finally:
            budget.give_back(uid, held)

    async def _store(self, prepared: Prepared) -> None:
        # hashes, fsyncs, and the directory made for it is now the checkpoint
        await trio.to_thread.run_sync(self.fabric.states.commit, prepared)

    async def truncate(self, size: int, uid: int) -> None:
        raise self.refuse_write()


class NpyHeader(NamedTuple):
    size: int  # bytes, magic included: where the array's bytes begin
    dtype: np.dtype
    shape: tuple[int, ...]


def _acceptable_header(fabric: Fabric, name: str, rank: int,
                       data: bytearray) -> NpyHeader | None:
    """The .npy header once it is all written and acceptable, None while it is not all
    there; a refusal when it cannot be."""
    head = bytes(data[:12])
    if head[: len(NPY_MAGIC)] != NPY_MAGIC[: len(head)]:
        raise Invalid(f"{name} is not a .npy file (it does not start with {NPY_MAGIC!r})")
    if len(head) < 12:
        return None
    length_bytes = 2 if head[6] == 1 else 4
    total = 8 + length_bytes + int.from_bytes(head[8 : 8 + length_bytes], "little")
    if total > NPY_HEADER_MAX:
        raise Invalid(f"{name} has a {total}-byte .npy header; numpy reads {NPY_HEADER_MAX}")
    if len(data) < total:
        return None
    header = io.BytesIO(bytes(data[:total]))
    try:
        version = np.lib.format.read_magic(header)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, _fortran_order, dtype = read(header)
    except ValueError as exc:
        raise Invalid(f"{name} has a malformed .npy header: {exc}") from exc
    if dtype.kind not in "iufc":
        raise Invalid(f"{name} holds {dtype}: a state is numbers (complex, real or integer)")
    if len(shape) != rank:
        raise Invalid(f"{name} must be a {rank}-D array, not {len(shape)}-D")
    fabric.states.screen(shape)
    return NpyHeader(total, dtype, shape)
