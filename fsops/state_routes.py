"""The /states tree: one directory per checkpoint.

    /states/<ckpt>/meta.json            format, fidelity, sizes, times (read-only)
    /states/<ckpt>/statevector.npy      the decoded state (density_matrix.npy for mixed
                                        formats), readable by np.load from the mount
    /states/<ckpt>/blob                 the stored bytes exactly as kept
    mkdir /states/x; cp psi.npy /states/x/statevector.npy   imports a state

/states is 1777, like /tmp: anyone may import, and only the owner of a checkpoint (or root)
may remove it. A checkpoint's directory and files belong to its owner; the blob and the
decoded state are 0400, since a state is its owner's data; meta.json is 0444.
"""

import io
import time

import numpy as np
import trio

from fsops import nodes
from fsops.nodes import Node
from levels import native
from levels.errors import Invalid, NotFound, QfsError, ReadOnly
from levels.fabric import Fabric
from levels.states import Request, meta_json, npy_bytes, npy_size, owner_of

Path = tuple[str, ...]
STATES = "states"
IMPORT_FILES = {"statevector.npy": 1, "density_matrix.npy": 2}  # name -> array rank
NPY_MAGIC = b"\x93NUMPY"
NPY_HEADER_MAX = 10_000 + 12  # numpy's own limit on a header, plus magic and length


def resolve(fabric: Fabric, path: Path) -> Node:
    store = fabric.states
    if len(path) == 1:
        return nodes.directory(time.time_ns(), perm=0o1777, timeout=0.0)
    name = path[1]
    if name in store.pending:
        if len(path) == 2:
            return owned(nodes.directory(time.time_ns(), timeout=0.0), store.pending[name])
        raise NotFound(f"{name} holds no state yet: cp a .npy file in")
    meta = store.get(name)
    owner = owner_of(meta)
    if len(path) == 2:
        return owned(nodes.directory(meta["created_ns"], timeout=0.0), owner)
    leaf = path[2] if len(path) == 3 else ""
    created = meta["created_ns"]
    if leaf == "meta.json":
        return owned(nodes.constant(meta_json(meta), created), owner)
    if leaf == "lineage":
        return owned(nodes.constant(store.lineage(name), created), owner)
    if leaf == "blob":
        async def read_blob() -> bytes:
            return await trio.to_thread.run_sync(store.blob, name, 0, meta["stored_bytes"])

        return Node(nodes.FILE, 0o400, created, size=meta["stored_bytes"], read=read_blob,
                    attr_timeout=nodes.IMMUTABLE_TIMEOUT, uid=owner)
    if leaf == f"{meta['decodes_to']}.npy":
        async def read_state() -> bytes:
            key = (name, created)
            data = store.decoded_npy.get(key)
            if data is None:
                _meta, decoded = await native.run_sync(store.load, name)  # Qiskit decodes
                data = await trio.to_thread.run_sync(npy_bytes, decoded)
                store.decoded_npy.put(key, data)
            return data

        return Node(nodes.FILE, 0o400, created, size=npy_size(store.decoded_shape(name)),
                    read=read_state, attr_timeout=nodes.IMMUTABLE_TIMEOUT, uid=owner)
    raise NotFound("/".join(path))


def owned(node: Node, uid: int) -> Node:
    node.uid = uid
    return node


def list_names(fabric: Fabric, path: Path) -> list[str]:
    store = fabric.states
    if len(path) == 1:
        return sorted({*store.names(), *store.pending})
    if path[1] in store.pending:
        return []
    meta = store.get(path[1])
    return ["blob", "lineage", "meta.json", f"{meta['decodes_to']}.npy"]


def is_checkpoint_file(fabric: Fabric, path: Path) -> bool:
    return len(path) == 3 and path[0] == STATES and path[1] not in fabric.states.pending


def import_node(fabric: Fabric, path: Path) -> Node:
    """A file written into a directory made by mkdir: /states/<x>/<file>.npy imports it.

    np.save cannot see an error from close() (numpy's tofile writes through a duplicate of
    the descriptor and ignores the error of closing it), so what the .npy header decides
    (magic, a numeric dtype, the rank the file name asks for, a power-of-two shape,
    max_checkpoint_size_mb) fails the write() that completes the header, and close() gives
    the same refusal. The values (finite, normalised, Hermitian, positive, unit trace) are
    checked at close, when all of them are there."""
    if len(path) != 3 or path[1] not in fabric.states.pending:
        raise ReadOnly("states are imported into a new directory: mkdir /states/x first")
    rank = IMPORT_FILES.get(path[2])
    if rank is None:
        raise Invalid(f"import as {' or '.join(IMPORT_FILES)}, not {path[2]}")
    name, filename = path[1], path[2]
    refused: list[QfsError] = []

    def screen(data: bytearray) -> bool:
        try:
            return _header_passes(fabric, filename, rank, data)
        except QfsError as exc:
            refused[:] = [exc]
            raise

    async def commit(data: bytes, uid: int) -> None:
        if refused:
            raise refused[0]
        owner = fabric.states.pending.get(name, uid)  # who made the directory

        def prepare():
            try:
                array = np.load(io.BytesIO(data), allow_pickle=False)
            except Exception as exc:
                raise Invalid(f"{filename} is not a .npy array: {exc}") from exc
            if array.ndim != rank:
                raise Invalid(f"{filename} must be a {rank}-D array, not {array.ndim}-D")
            return fabric.states.prepare(Request(name, owner=owner), array)

        prepared = await native.run_sync(prepare)  # Qiskit measures the fidelity
        await trio.to_thread.run_sync(fabric.states.commit, prepared)  # hashes and fsyncs
        fabric.states.pending.pop(name, None)

    return Node(nodes.FILE, 0o644, 0, entry_timeout=0.0, commit=commit, screen=screen)


def _header_passes(fabric: Fabric, name: str, rank: int, data: bytearray) -> bool:
    """True once the whole .npy header is written and acceptable, False while it is not
    all there; a refusal when it cannot be."""
    head = bytes(data[:12])
    if head[: len(NPY_MAGIC)] != NPY_MAGIC[: len(head)]:
        raise Invalid(f"{name} is not a .npy file (it does not start with {NPY_MAGIC!r})")
    if len(head) < 12:
        return False
    length_bytes = 2 if head[6] == 1 else 4
    total = 8 + length_bytes + int.from_bytes(head[8 : 8 + length_bytes], "little")
    if total > NPY_HEADER_MAX:
        raise Invalid(f"{name} has a {total}-byte .npy header; numpy reads {NPY_HEADER_MAX}")
    if len(data) < total:
        return False
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
    return True
