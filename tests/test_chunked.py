"""Chunked sealing of dense states (levels/densestate.py, levels/store/chunked.py), without
FUSE: tampering, truncation, reordering and swaps are detected chunk by chunk; the old
single-blob format still reads; fidelity and ranged reads against Qiskit and numpy."""

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import subprocess
import threading

import numpy as np
import pytest
import trio
from qiskit.quantum_info import Statevector, entropy, partial_trace, state_fidelity

from levels.config import load_config
from levels.densestate import CHUNK_AMPLITUDES
from levels.errors import Corrupt, Invalid
from levels.fabric import Fabric
from levels.states import Request, npy_bytes
from levels.store.chunked import TRAILER

QUBITS = 20  # four chunks of 2^18 amplitudes


def random_state(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(2**n) + 1j * rng.standard_normal(2**n)
    return vector / np.linalg.norm(vector)


def fabric_at(path, **state_store) -> Fabric:
    config = load_config()
    for key, value in state_store.items():
        setattr(config.state_store, key, value)
    return Fabric(path, config)


def checkpoint(fabric: Fabric, name: str, state: np.ndarray, **request) -> dict:
    return fabric.states.commit(fabric.states.prepare(
        Request(name, format="statevector", **request), state))


def blob_file(fabric: Fabric, meta: dict):
    return fabric.data_dir / "blobs" / meta["blob"][:2] / meta["blob"]


def chunk_table(fabric: Fabric, name: str) -> list[tuple[int, int, str]]:
    reader = fabric.states.reader(name)
    assert reader is not None
    return reader._blob.index.chunks


async def read_ranges(reader, ranges) -> list[bytes]:
    """The reads FUSE makes (chunks decoded on the pool, the next ones ahead)."""
    return [await reader.read(offset, size) for offset, size in ranges]


def test_chunked_round_trip_fidelity_and_ranges_against_qiskit(tmp_path):
    state = random_state(QUBITS, 1)
    for precision in ("complex128", "complex64"):
        fabric = fabric_at(tmp_path / precision, amplitude_precision=precision)
        try:
            meta = checkpoint(fabric, "s", state)
            assert meta["chunked"] and meta["precision"] == precision
            _meta, decoded = fabric.states.load("s")
            qiskit = state_fidelity(Statevector(state), Statevector(decoded))
            assert meta["fidelity"] >= 1 - 1e-12
            assert abs(meta["fidelity"] - qiskit) < 1e-12
            exact = entropy(partial_trace(Statevector(state), list(range(6, QUBITS))), base=2)
            assert meta["decoded_sha256"] is None and "stored_sha256" not in meta
            if precision == "complex64":
                assert meta["compression_ratio"] <= 0.45
                assert meta["entanglement_entropy"] == pytest.approx(exact, abs=1e-5)
            else:
                assert np.allclose(decoded, state, rtol=1e-14, atol=0)  # lossless
                assert meta["entanglement_entropy"] == pytest.approx(exact, abs=1e-9)
            whole = npy_bytes(decoded)
            reader = fabric.states.reader("s")
            assert reader.size == len(whole)
            chunk = CHUNK_AMPLITUDES * 16
            ranges = ((0, 10), (5, 200_000), (chunk - 3, 7), (len(whole) - 9, 99),
                      (2 * chunk + 1000, chunk + 17), (len(whole), 5))
            for offset, size in ranges:
                assert reader.read_sync(offset, size) == whole[offset : offset + size]

            fresh = fabric.states.reader("s")
            assert trio.run(read_ranges, fresh, ranges) == [whole[o : o + n] for o, n in ranges]
        finally:
            fabric.close()


def test_reads_that_arrive_together_share_one_decode_per_chunk(tmp_path):
    """The kernel's read-ahead sends several 1 MiB reads of one 4 MiB chunk at once: each
    chunk is decoded once and every read gets its bytes. Chunks decoded ahead of a reader
    that jumps elsewhere are not kept beyond the next ones."""
    fabric = fabric_at(tmp_path)
    try:
        checkpoint(fabric, "s", random_state(22, 5))  # 16 chunks
        whole = npy_bytes(fabric.states.load("s")[1])
        reader = fabric.states.reader("s")
        decodes: list[int] = []
        decode = reader._decode

        def counted(index: int) -> np.ndarray:
            decodes.append(index)
            return decode(index)

        reader._decode = counted
        step = 1 << 20
        offsets = range(0, len(whole), step)

        async def four_at_a_time() -> dict[int, bytes]:
            """As the kernel's read-ahead asks: a window of reads at once, moving on."""
            got: dict[int, bytes] = {}

            async def one(offset: int) -> None:
                got[offset] = bytes(await reader.read(offset, step))

            for window in range(0, len(offsets), 4):
                async with trio.open_nursery() as nursery:
                    for offset in offsets[window : window + 4]:
                        nursery.start_soon(one, offset)
            return got

        got = trio.run(four_at_a_time)
        assert b"".join(got[offset] for offset in offsets) == whole
        assert sorted(decodes) == list(range(16))

        jumping = fabric.states.reader("s")
        far_apart = [(chunk * CHUNK_AMPLITUDES * 16 + 500, 10) for chunk in range(0, 16, 3)]
        assert trio.run(read_ranges, jumping, far_apart) == [
            whole[o : o + n] for o, n in far_apart]
        assert len(jumping._decoding) <= 2 * jumping.AHEAD
    finally:
        fabric.close()


def test_single_blob_checkpoints_still_read(tmp_path):
    """A state vector the automatic choice keeps dense is chunked; incremental children
    keep the single-blob format (QFS1), and one of a chunked parent reads back."""
    fabric = fabric_at(tmp_path)
    try:
        state = random_state(10, 2)
        fabric.states.commit(fabric.states.prepare(Request("auto"), state))
        meta = fabric.states.get("auto")
        assert meta["format"] == "statevector" and meta["chunked"]
        assert "dense and entangled" in meta["format_reason"]
        assert np.allclose(fabric.states.load("auto")[1], state)
        checkpoint(fabric, "parent", state)
        child = state.copy()
        child[:8] = child[8:16]
        child /= np.linalg.norm(child)
        checkpoint(fabric, "child", child, parent="parent")
        assert blob_file(fabric, fabric.states.get("child")).read_bytes()[:4] == b"QFS1"
        assert np.allclose(fabric.states.load("child")[1], child)
    finally:
        fabric.close()


def reads(fabric: Fabric, name: str) -> None:
    """Every byte of the checkpoint's decoded state, read by ranges and whole."""
    reader = fabric.states.reader(name)
    reader.read_sync(0, reader.size)
    fabric.states.load(name)


def test_tampered_truncated_and_reordered_chunks_are_refused(tmp_path):
    # Uncompressed, so chunks have one length and can be swapped in place.
    fabric = fabric_at(tmp_path, compression_enabled=False)
    try:
        meta = checkpoint(fabric, "a", random_state(QUBITS, 3))
        other = checkpoint(fabric, "b", random_state(QUBITS, 4))
        path = blob_file(fabric, meta)
        good = path.read_bytes()
        table = chunk_table(fabric, "a")
        assert len(table) == 4 and len({n for _o, n, _t in table}) == 1
        (o0, n0, _), (o1, _n1, _) = table[0], table[1]
        swapped = bytearray(good)
        swapped[o0 : o0 + n0], swapped[o1 : o1 + n0] = good[o1 : o1 + n0], good[o0 : o0 + n0]
        flipped = bytearray(good)
        flipped[o1 + 100] ^= 1
        foreign = bytearray(good)  # chunk 0 of another checkpoint, in its own place
        foreign[o0 : o0 + n0] = blob_file(fabric, other).read_bytes()[o0 : o0 + n0]
        index_length = TRAILER.unpack(good[-TRAILER.size :])[0]
        dropped = good[: table[-1][0]] + good[-TRAILER.size - index_length :]
        for bad in (bytes(swapped), bytes(flipped), bytes(foreign), good[:-1], good[: o1],
                    dropped):
            path.write_bytes(bad)
            with pytest.raises(Corrupt):
                reads(fabric, "a")
        path.write_bytes(good)
        reads(fabric, "a")
    finally:
        fabric.close()


def test_unencrypted_chunks_are_checked_against_the_record(tmp_path):
    """Without a key an index could be rewritten to match edited chunks: the record keeps
    the index's hash, so that is refused too."""
    fabric = fabric_at(tmp_path, compression_enabled=False)
    try:
        meta = checkpoint(fabric, "p", random_state(QUBITS, 5), encrypt=False)
        path = blob_file(fabric, meta)
        good = path.read_bytes()
        offset, length, _tag = chunk_table(fabric, "p")[2]
        edited = bytearray(good)
        edited[offset + 5] ^= 1
        path.write_bytes(bytes(edited))
        with pytest.raises(Corrupt):
            reads(fabric, "p")
        index_length = TRAILER.unpack(good[-TRAILER.size :])[0]
        document = json.loads(good[-TRAILER.size - index_length : -TRAILER.size])
        document["chunks"][2][2] = hashlib.sha256(edited[offset : offset + length]).hexdigest()
        forged = json.dumps(document, sort_keys=True).encode()
        path.write_bytes(bytes(edited[: -TRAILER.size - index_length]) + forged
                         + TRAILER.pack(len(forged), b"QFS2"))
        with pytest.raises(Corrupt):
            reads(fabric, "p")
    finally:
        fabric.close()


def test_blob_writers_name_what_put_would(tmp_path, monkeypatch):
    """A blob written in parts is the blob `put` makes of the joined bytes, small parts
    hashed in line and large ones beside their write, in order (a buffer its caller
    reuses at once included), its writeback started as it grows, over every byte once;
    an aborted one leaves nothing; a store without a writer of its own gets a joining
    one."""
    from levels.store import blobs
    from levels.store.blobs import (
        HASH_ASIDE,
        WRITEBACK_EVERY,
        DirectoryBlobStore,
        JoinedWriter,
        writer_for,
    )

    started = []
    monkeypatch.setattr(blobs, "_start_writeback",
                        lambda fd, offset, size: started.append((offset, size)))
    store = DirectoryBlobStore(tmp_path / "blobs")
    reused = bytearray(os.urandom(HASH_ASIDE))
    parts = [b"alpha" * 1000, b"", os.urandom(HASH_ASIDE), os.urandom(HASH_ASIDE + 7),
             b"beta" * 3, os.urandom(WRITEBACK_EVERY), reused, os.urandom(3 * HASH_ASIDE),
             os.urandom(WRITEBACK_EVERY)]
    joined = b"".join(parts)
    writer = writer_for(store)
    for part in parts:
        writer.write(part)
        if part is reused:
            reused[:] = bytes(len(reused))  # the caller's buffer, reused after write
    assert writer.size == len(joined)
    key = writer.commit()
    assert key == hashlib.sha256(joined).hexdigest()
    assert store.get(key) == joined
    assert len(started) == 2 and all(size >= WRITEBACK_EVERY for _, size in started)
    assert [offset for offset, _ in started] == [0, sum(started[0])]
    dropped = writer_for(store)
    dropped.write(b"never")
    dropped.write(os.urandom(HASH_ASIDE))
    dropped.abort()
    assert store.list() == [key]
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [key[:2]]
    crashed = writer_for(store)  # a writer whose process died: gone at the next start
    crashed.write(b"partial")
    dead = crashed._temp.with_name(crashed._temp.name.replace(f".{os.getpid()}.", ".999999999."))
    crashed._temp.rename(dead)
    alive = writer_for(store)
    DirectoryBlobStore(tmp_path / "blobs")
    assert not dead.exists() and alive._temp.exists()
    alive.abort()

    class PutOnly:  # a store with put alone (as any BlobStore)
        def __init__(self) -> None:
            self.blobs: dict[str, bytes] = {}

        def put(self, data: bytes) -> str:
            self.blobs[hashlib.sha256(data).hexdigest()] = data
            return hashlib.sha256(data).hexdigest()

    plain = PutOnly()
    joined = writer_for(plain)
    assert isinstance(joined, JoinedWriter)
    for part in parts:
        joined.write(part)
    assert plain.blobs[joined.commit()] == b"".join(parts)


def _cached_bytes(path) -> int:
    """Bytes of `path` in the page cache (util-linux fincore); 0 on tmpfs, which keeps
    every file in memory whatever O_DIRECT says."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()
    if kind == "tmpfs":
        return 0
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def _direct_from_small(monkeypatch) -> None:
    from levels.store import blobs

    monkeypatch.setattr(blobs, "DIRECT_FROM", 1 << 20)
    monkeypatch.setattr(blobs, "DIRECT_STAGE", 256 << 10)


def _write_across_direct_from(store) -> tuple[bytes, object]:
    """Parts that cross DIRECT_FROM, a stage boundary and end mid-block; the writer's
    read-back checked on each side of every boundary before its commit."""
    from levels.store import blobs

    parts = [os.urandom(700 << 10), os.urandom(500 << 10), b"xyz", os.urandom(300 << 10),
             os.urandom(1 << 20), os.urandom(5000)]
    joined = b"".join(parts)
    writer = blobs.writer_for(store)
    for part in parts:
        writer.write(part)
    edge, total = blobs.DIRECT_FROM, len(joined)
    for offset, size in [(0, 100), (edge - 10, 20), (edge + 5, 1000), (edge + 1000, 600 << 10),
                         (total - 50, 100), (edge - 4096, total), (total, 10)]:
        assert writer.read(offset, size) == joined[offset : offset + size], (offset, size)
    return joined, writer


def test_a_blobs_bytes_past_direct_from_bypass_the_page_cache(tmp_path, monkeypatch):
    """A large blob's tail is written and read with O_DIRECT: the same bytes and key as
    `put`, read back right before and after its commit at any offset, and none of it
    past DIRECT_FROM left in the page cache."""
    from levels.store import blobs

    _direct_from_small(monkeypatch)
    store = blobs.DirectoryBlobStore(tmp_path / "blobs")
    joined, writer = _write_across_direct_from(store)
    key = writer.commit()
    assert key == hashlib.sha256(joined).hexdigest()
    path = tmp_path / "blobs" / key[:2] / key
    assert path.stat().st_size == len(joined)
    assert _cached_bytes(path) <= blobs.DIRECT_FROM
    edge, total = blobs.DIRECT_FROM, len(joined)
    with concurrent.futures.ThreadPoolExecutor(1) as fresh:  # no aligned buffer yet
        assert fresh.submit(store.get_range, key, edge, 0).result() == b""
    for offset, size in [(edge, 4096), (edge + 1, 7), (edge + 300_000, 900_000),
                         (total - 3, 100), (total + 5, 10)]:
        assert store.get_range(key, offset, size) == joined[offset : offset + size]
    assert _cached_bytes(path) <= blobs.DIRECT_FROM
    assert store.get_range(key, edge - 100, 200) == joined[edge - 100 : edge + 100]
    assert store.get(key) == joined
    aborted = blobs.writer_for(store)
    aborted.write(os.urandom(2 << 20))
    aborted.abort()
    assert store.list() == [key] and not list((tmp_path / "blobs").glob(".*.tmp"))


def test_a_disk_that_fills_during_a_direct_write_refuses_it_and_keeps_nothing(
        tmp_path, monkeypatch):
    """The disk fills after the free-space check (another writer): the direct write that
    finds it full, in a part or in the commit's last block, is NoSpace, and the writer
    leaves no temporary file and no descriptor behind."""
    from levels.errors import NoSpace
    from levels.store import blobs

    _direct_from_small(monkeypatch)
    monkeypatch.setattr(blobs, "CHECK_EVERY", 4 << 20)
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], check=True)
    try:
        store = blobs.DirectoryBlobStore(root / "blobs")
        for last in ("a part", "the commit"):
            writer = blobs.writer_for(store)
            writer.write(os.urandom(blobs.DIRECT_FROM + 5000))  # checked: 4 MiB fit
            descriptors = len(os.listdir("/proc/self/fd"))
            filler = root / "filler"
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(bytes(1 << 16))
                    f.flush()
            with pytest.raises(NoSpace):
                if last == "a part":
                    writer.write(os.urandom(1 << 20))  # within the 4 MiB checked
                else:
                    writer.commit()
            assert not list((root / "blobs").glob(".*.tmp")), last
            assert len(os.listdir("/proc/self/fd")) == descriptors - 2, last
            filler.unlink()
        assert store.list() == []
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_file_system_without_direct_io_gets_the_same_blobs(tmp_path, monkeypatch):
    """Where O_DIRECT is refused, at open or at the first transfer (EINVAL), the blob is
    written and read through the page cache instead, byte for byte the same."""
    import errno
    import fcntl

    from levels.store import blobs

    _direct_from_small(monkeypatch)
    real_open, real_pwrite, real_preadv = os.open, os.pwrite, os.preadv
    refused = {"open": 0, "transfer": 0}

    def open_without_direct(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT and refused["open"] == 0:
            refused["open"] += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    def refusing(real, name):
        def transfer(fd, *args):
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                refused[name] += 1
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, *args)
        return transfer

    monkeypatch.setattr(os, "open", open_without_direct)
    monkeypatch.setattr(os, "pwrite", refusing(real_pwrite, "transfer"))
    monkeypatch.setattr(os, "preadv", refusing(real_preadv, "transfer"))
    store = blobs.DirectoryBlobStore(tmp_path / "blobs")
    refused_at_open, written_later = _write_across_direct_from(store)
    refused_at_open_key = written_later.commit()  # the first writer's open was refused
    joined, writer = _write_across_direct_from(store)  # this one's first write is
    key = writer.commit()
    assert refused["open"] == 1 and refused["transfer"] >= 1
    for data, name in ((refused_at_open, refused_at_open_key), (joined, key)):
        assert name == hashlib.sha256(data).hexdigest() and store.get(name) == data
        edge = blobs.DIRECT_FROM
        assert store.get_range(name, edge + 1, 5000) == data[edge + 1 : edge + 5001]



def test_mmap_of_statevector_npy_reads_only_the_chunks_it_touches(mount_factory):
    """np.load(mmap_mode="r") through the mount: the slices read are the state's, and a
    damaged chunk elsewhere in the blob does not stop them (it would, were the file
    decoded whole at open), while a read of that chunk is EIO."""
    import errno

    qfs = mount_factory()
    state = random_state(QUBITS, 7)
    directory = qfs.root / "states" / "m"
    directory.mkdir()
    np.save(directory / "statevector.npy", state)
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["chunked"] and meta["fidelity"] == 1.0
    whole = np.load(directory / "statevector.npy", mmap_mode="r")
    assert np.allclose(whole, state, rtol=1e-14, atol=0)
    stored = (directory / "blob").read_bytes()
    del whole  # a mapping keeps a lazily unmounted daemon serving it
    qfs.stop()
    path = next(p for p in (qfs.data / "blobs").glob("??/*") if p.read_bytes() == stored)
    index_length = TRAILER.unpack(stored[-TRAILER.size :])[0]
    damaged = bytearray(stored)
    damaged[-TRAILER.size - index_length - 1000] ^= 1  # inside the last chunk
    path.write_bytes(bytes(damaged))
    second = mount_factory(data=qfs.data)
    target = second.root / "states" / "m" / "statevector.npy"
    mapped = np.load(target, mmap_mode="r")
    assert mapped.shape == state.shape
    assert np.allclose(mapped[:1000], state[:1000], rtol=1e-14, atol=0)
    middle = slice(CHUNK_AMPLITUDES + 5, CHUNK_AMPLITUDES + 4000)
    assert np.allclose(mapped[middle], state[middle], rtol=1e-14, atol=0)
    del mapped
    with open(target, "rb") as f:
        f.seek(target.stat().st_size - 4096)
        with pytest.raises(OSError) as caught:
            f.read(4096)
    assert caught.value.errno == errno.EIO


def test_npy_array_reads_a_written_import_in_place():
    import io

    from levels.densestate import npy_array
    from levels.errors import Invalid

    for array in (random_state(6, 8), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                  np.arange(8, dtype=">i4")):
        buffer = io.BytesIO()
        np.save(buffer, array)
        data = bytearray(buffer.getvalue())
        viewed = npy_array(data)
        assert viewed.dtype == array.dtype and np.array_equal(viewed, array)
        if array.ndim == 1:
            assert np.shares_memory(viewed, np.frombuffer(data, dtype=np.uint8))
        with pytest.raises(Invalid):
            npy_array(data[:-1])


def test_a_sealing_asks_its_caller_to_wait_only_on_unfinished_chunks(tmp_path):
    """room() bounds the chunks in flight, and what it gives to wait on is never already
    done (a done one made the caller spin, a quarter of a checkpoint's time)."""
    fabric = fabric_at(tmp_path)
    try:
        state = random_state(22, 4)  # 16 chunks, 4 in flight at most
        chunked = fabric.states.begin_import(Request("w"), state.size)
        sealing, gate = chunked.sealing, threading.Event()

        def held(start: int) -> np.ndarray:
            gate.wait()
            return state[start : start + CHUNK_AMPLITUDES]

        waits = []
        for start in range(0, state.size, CHUNK_AMPLITUDES):
            while (wait := sealing.room()) is not None:
                assert not wait.done()
                waits.append(wait)
                gate.set()
                concurrent.futures.wait([wait])
            sealing.submit(functools.partial(held, start))
        gate.set()
        assert waits, "16 chunks never waited"
        meta = fabric.states.commit(chunked.complete())
        assert meta["fidelity"] == 1.0
        assert np.allclose(fabric.states.load("w")[1], state, rtol=1e-15, atol=0)
    finally:
        fabric.close()


def test_a_sealing_measures_its_spectrum_with_blas_on_one_thread(tmp_path, monkeypatch):
    """The entropy's eigvalsh runs before the BLAS limit is lifted: on OpenBLAS's threads
    it left one spinning ~100 ms after every checkpoint, a fifth of a 24-qubit one's CPU."""
    from threadpoolctl import threadpool_info, threadpool_limits

    eigvalsh, blas_threads = np.linalg.eigvalsh, []

    def counted(matrix):
        blas_threads.append(max(i["num_threads"] for i in threadpool_info()
                                if i["user_api"] == "blas"))
        return eigvalsh(matrix)

    fabric = fabric_at(tmp_path)
    try:
        monkeypatch.setattr(np.linalg, "eigvalsh", counted)
        with threadpool_limits(2, user_api="blas"):  # what a limit would be lifted to
            fabric.states.commit(fabric.states.prepare(Request("w", format="statevector"),
                                                       random_state(18, 5)))
    finally:
        fabric.close()
    assert blas_threads == [1]


def test_auto_seals_a_dense_state_first_and_chooses_whole_only_when_unsettled(
        tmp_path, monkeypatch):
    """A state held in memory that looks dense is sealed as a state vector under `auto`
    without the whole-state probes; one whose chunks leave the format open (every other
    row across the cut zero: 2^20 non-zeros, which a stabilizer state may have) is
    chosen whole, its speculative blob dropped; one dense only in its first amplitudes
    never looks dense; NaN is refused as the whole path refuses it."""
    from levels import densestate, stateformats

    dense = random_state(21, 6)
    halves = dense.copy()
    halves.reshape(-1, 64)[1::2] = 0
    halves /= np.linalg.norm(halves)
    head = np.zeros_like(dense)
    head[: 2**16] = dense[: 2**16]
    head /= np.linalg.norm(head)
    options = stateformats.FormatOptions()
    assert stateformats.looks_dense(dense, options) and stateformats.looks_dense(halves, options)
    assert not stateformats.looks_dense(head, options)
    fabric = fabric_at(tmp_path)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(stateformats, "schmidt_spectrum", None)  # never the whole path
            meta = fabric.states.commit(fabric.states.prepare(Request("dense"), dense))
        assert meta["format"] == "statevector"
        for name, state in (("dense", dense), ("halves", halves), ("head", head)):
            if name != "dense":
                meta = fabric.states.commit(fabric.states.prepare(Request(name), state))
            assert (meta["format"], meta["format_reason"]) == stateformats.choose_format(
                state, fabric.states.options)
            assert np.allclose(fabric.states.load(name)[1], state, rtol=0, atol=1e-15)
        broken = dense.copy()
        broken[5] = np.nan
        with pytest.raises(Invalid, match="NaN"):
            fabric.states.prepare(Request("broken"), broken)
        kept = {fabric.states.get(name)["blob"] for name in ("dense", "halves", "head")}
        assert set(fabric.states._blobs.list()) == kept
        assert not list(tmp_path.rglob(".stage-*"))
        assert densestate.one_blas_thread._holders == 0
    finally:
        fabric.close()


def test_a_guess_whose_blob_does_not_fit_gives_way_to_the_whole_choice(tmp_path):
    """The speculative blob of `auto`'s guess (the whole state vector) that the disk
    cannot hold is no refusal: the whole-state choice follows and stores what fits."""
    from levels import stateformats

    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(root)], check=True)
    try:
        state = np.zeros(2**21, dtype=complex)
        state.reshape(-1, 64)[::32] = random_state(16, 7).reshape(-1, 64)  # rows it samples
        assert stateformats.looks_dense(state, stateformats.FormatOptions())
        fabric = fabric_at(root / "data", compression_enabled=False)
        try:
            meta = fabric.states.commit(fabric.states.prepare(Request("s"), state))
            assert meta["format"] == "sparse"
            assert np.allclose(fabric.states.load("s")[1], state, rtol=0, atol=1e-15)
            assert not list(root.rglob(".stage-*"))
        finally:
            fabric.close()
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
