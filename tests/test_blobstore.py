"""The blob store seam in process: the directory store, sealing as a wrapping store, and
what StateStore builds on them (shared blobs, the seal's binding, incremental blobs, the
event loop left free while a blob is put)."""

import json
import os
import subprocess
import threading

import numpy as np
import pytest
import trio
from qiskit.quantum_info import random_statevector

from levels import ctl
from levels.config import load_config
from levels.errors import Corrupt, NoSpace, NotFound
from levels.fabric import Fabric
from levels.qubits import LiveQubitManager
from levels.states import Request, StateStore
from levels.store.blobs import BlobStore, DirectoryBlobStore
from levels.store.meta import LmdbMetaStore
from levels.store.sealed import Binding, SealedBlobStore, Sealer

KEY = bytes(range(32))
# Blobs sealed by qfs before the store was a wrapping one (key KEY, payload PAYLOAD): the
# layout on disk must keep opening in existing data directories.
PAYLOAD = b"a state payload sealed by qfs 0.1\n" * 4
OLD_AAD = b"bound to checkpoint old"
OLD_ENCRYPTED = bytes.fromhex(
    "514653310369771071cb2b5b7e0e555d7ade0f6b311cd68530cbcbaf82e12c9c5a5c5610cc22b781433b"
    "a4ceff1c6c88cb99207be1788c98a3f424a03cb2070acc55ff8b95910f61903cbb7cab00b1024ad13f3a")
OLD_PLAIN = bytes.fromhex(
    "514653310228b52ffd2088550100240261207374617465207061796c6f6164207365616c656420627920"
    "71667320302e310a01001a25554f")


def files(root) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_directory_store_keeps_bytes_by_their_digest(tmp_path):
    store: BlobStore = DirectoryBlobStore(tmp_path / "blobs")
    key = store.put(b"0123456789")
    assert store.put(b"0123456789") == key  # same content, one blob
    assert store.list() == [key] == files(tmp_path / "blobs")
    assert store.get(key) == b"0123456789"
    assert store.get_range(key, 3, 4) == b"3456"
    assert store.get_range(key, 8, 100) == b"89"
    assert store.get_range(key, 20, 5) == b""
    store.delete(key)
    store.delete(key)  # gone already: no error
    assert store.list() == []
    for read in (store.get, lambda k: store.get_range(k, 0, 1)):
        with pytest.raises(NotFound):
            read(key)


def test_keys_that_are_not_digests_are_never_paths(tmp_path):
    store = DirectoryBlobStore(tmp_path / "blobs")
    victim = tmp_path / "victim"
    victim.write_bytes(b"not a blob")
    for key in (str(victim), "../victim", "AB" * 32, "ab" * 31):
        for action in (store.get, store.delete, lambda k: store.get_range(k, 0, 1)):
            with pytest.raises(Corrupt):
                action(key)
    assert victim.read_bytes() == b"not a blob"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_a_full_store_refuses_the_put_and_keeps_what_it_held(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], check=True)
    try:
        store = DirectoryBlobStore(root / "blobs")
        kept = store.put(b"k" * (2 << 20))
        with pytest.raises(NoSpace, match="full"):
            store.put(os.urandom(8 << 20))  # fits, but not with the metadata's reserve
        assert store.list() == [kept] == files(root / "blobs")  # no temporary file left
        assert store.get(kept) == b"k" * (2 << 20)
        writer = store.writer()  # written in parts (a chunked checkpoint): what they need
        for _ in range(4):       # must fit, not the 64 MiB between two looks at the disk
            writer.write(b"p" * (256 << 10))
        assert store.get(writer.commit()) == b"p" * (1 << 20)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_sealed_store_binds_each_blob_to_what_sealed_it(tmp_path):
    inner = DirectoryBlobStore(tmp_path / "blobs")
    store = SealedBlobStore(inner, Sealer(KEY, threads=1))
    binding = Binding(b"checkpoint a")
    key = store.put(store.seal(PAYLOAD, binding, encrypt=True, level=3))
    assert store.open(key, binding) == PAYLOAD
    stored = inner.get(key)
    assert stored[:5] == b"QFS1\x03" and PAYLOAD not in stored
    assert store.get_range(key, 0, 5) == b"QFS1\x03"  # ranges are of the bytes as kept
    tampered = bytearray(stored)
    tampered[len(tampered) // 2] ^= 1
    other_key = SealedBlobStore(inner, Sealer(os.urandom(32), threads=1))
    for by, bad, bound in ((store, key, Binding(b"checkpoint b")),  # swapped
                           (store, inner.put(bytes(tampered)), binding),
                           (store, inner.put(stored[:-1]), binding),  # truncated
                           (other_key, key, binding)):
        with pytest.raises(Corrupt):
            by.open(bad, bound)
    parent = os.urandom(4096)
    child = parent[:4000] + b"changed"
    delta = store.seal(child, Binding(b"c", parent), encrypt=False, level=3)
    assert len(delta) < 200  # the parent's payload is the dictionary
    key = store.put(delta)
    assert store.open(key, Binding(b"c", parent)) == child
    with pytest.raises(Corrupt):
        store.open(key, Binding(b"c"))


def test_blobs_sealed_by_an_earlier_release_still_open(tmp_path):
    store = SealedBlobStore(DirectoryBlobStore(tmp_path / "blobs"), Sealer(KEY, threads=1))
    assert store.open(store.put(OLD_ENCRYPTED), Binding(OLD_AAD)) == PAYLOAD
    assert store.open(store.put(OLD_PLAIN), Binding(b"")) == PAYLOAD


@pytest.fixture
def meta(tmp_path):
    store = LmdbMetaStore(tmp_path / "meta.lmdb", 64)
    yield store
    store.close()


@pytest.fixture
def states(meta, tmp_path):
    blobs = SealedBlobStore(DirectoryBlobStore(tmp_path / "blobs"), Sealer(KEY, threads=1))
    return StateStore(meta, blobs, load_config().state_store, fidelity_floor=0.99)


def checkpoint(states: StateStore, state, name: str, **request) -> dict:
    return states.commit(states.prepare(Request(name, format="statevector", **request), state))


def test_checkpoints_share_a_blob_until_the_last_is_deleted(states):
    state = np.asarray(random_statevector(2**5, seed=1).data)
    one = checkpoint(states, state, "one", encrypt=False)
    two = checkpoint(states, state, "two", encrypt=False)
    assert one["blob"] == two["blob"] and states.blob_keys() == [one["blob"]]
    states.delete("one")
    assert np.allclose(states.load("two")[1], state)
    states.delete("two")
    assert states.blob_keys() == []


def test_a_blob_opens_only_under_the_record_it_was_sealed_for(states, meta):
    state = np.asarray(random_statevector(2**5, seed=2).data)
    first = checkpoint(states, state, "first")
    checkpoint(states, state, "second")
    stored = states.blob("first", 0, first["stored_bytes"])
    assert len(stored) == first["stored_bytes"] and stored[:5] == b"QFS2\x03"  # chunked
    edits = {"qubit_count": 6, "created_ns": first["created_ns"] + 1, "parent": "second",
             "decoded_sha256": "0" * 64, "format": "sparse", "name": "other"}
    for field, value in edits.items():
        edit(meta, "first", {field: value})
        with pytest.raises(Corrupt):
            states.load("first")
        edit(meta, "first", {field: first[field]})
    assert np.allclose(states.load("first")[1], state)
    edit(meta, "second", {"blob": first["blob"]})  # a blob moved under another checkpoint
    with pytest.raises(Corrupt):
        states.load("second")


def edit(meta: LmdbMetaStore, name: str, fields: dict) -> None:
    """Change a checkpoint's record as a damaged or edited store would hold it."""
    with meta.writing() as txn:
        record = json.loads(txn.get("checkpoints", name.encode()))
        txn.put("checkpoints", name.encode(), json.dumps({**record, **fields}).encode())


def test_incremental_checkpoints_store_the_change_and_need_their_parent(states, meta):
    base = np.asarray(random_statevector(2**10, seed=3).data)
    changed = base.copy()
    changed[-8:] = changed[-8:][::-1]
    full = checkpoint(states, changed, "full")
    checkpoint(states, base, "base")
    delta = checkpoint(states, changed, "delta", parent="base")
    assert delta["stored_bytes"] < 0.2 * full["stored_bytes"]
    assert np.allclose(states.load("delta")[1], changed)
    edit(meta, "delta", {"parent": None})
    with pytest.raises(Corrupt):
        states.load("delta")


class GatedStore(DirectoryBlobStore):
    """A directory store whose put waits for the event loop to move on: on trio's own
    thread it would wait in vain, since the loop cannot run while it waits."""

    def __init__(self, root, gate: threading.Event) -> None:
        super().__init__(root)
        self._gate = gate

    def put(self, data: bytes) -> str:
        if not self._gate.wait(timeout=20):
            raise AssertionError("a blob was put on the event loop's thread")
        return super().put(data)


def test_a_checkpoint_puts_its_blob_off_the_event_loop(tmp_path):
    config = load_config()
    fabric = Fabric(tmp_path / "data", config)
    try:
        gate = threading.Event()
        blobs = SealedBlobStore(GatedStore(tmp_path / "blobs", gate), Sealer(KEY, threads=1))
        states = StateStore(fabric.meta, blobs, config.state_store, fidelity_floor=0.99)
        manager = LiveQubitManager(fabric.meta, fabric.circuits, states,
                                   config.live_qubit_mgr, fabric.metrics, fabric.workers)
        manager.allocate(manager.device_names()[0], ctl.Alloc(3, "t", "linear"), uid=0)

        async def main() -> str:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_gate, gate)
                return await manager.execute("t", ctl.Checkpoint("c", format="statevector"), 0)

        assert trio.run(main).startswith("checkpoint c: statevector")
        assert states.blob_keys() == [states.get("c")["blob"]]
    finally:
        fabric.close()


async def open_gate(gate: threading.Event) -> None:
    await trio.sleep(0.2)  # after the checkpoint has begun, if the loop is free
    gate.set()
