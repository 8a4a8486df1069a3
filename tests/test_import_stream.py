"""An imported statevector.npy sealed as it is written (levels/vfs/importstream.py),
through the mount: chunks reach the blob store before close, the decoded state is checked
against Qiskit, and a write out of order, a cut-short file or a state that is not
normalised commits nothing and leaves no staged blob."""

import errno
import io
import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from qiskit.quantum_info import Statevector, random_statevector, state_fidelity

MIB = 1 << 20
STATEVECTOR_DEFAULT = "state_store:\n  default_serialization_format: statevector\n"


def streaming_mount(mount_factory, tmp_path: Path, extra: str = ""):
    config = tmp_path / "qfs.yaml"
    config.write_text(STATEVECTOR_DEFAULT + extra)
    return mount_factory(extra=["--config", str(config)])


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def staged_bytes(qfs) -> int:
    """Bytes in blobs being written (the blob store's staging files)."""
    return sum(p.stat().st_size for p in (qfs.data / "blobs").glob(".stage-*.tmp"))


def write_all(fd: int, data: bytes, start: int = 0, piece: int = MIB) -> None:
    for offset in range(start, len(data), piece):
        os.write(fd, data[offset : offset + piece])


def off_unit_state(qubits: int, seed: int) -> np.ndarray:
    """A random state whose norm² is 1 + 3e-7: within the tolerance, so normalised at
    decode."""
    return np.asarray(random_statevector(2**qubits, seed=seed).data) * math.sqrt(1 + 3e-7)


def staged_files(qfs) -> int:
    """Blobs being written: a streamed import's from its header on (a highly compressible
    state's first chunks may still sit in the writer's buffer)."""
    return len(list((qfs.data / "blobs").glob(".stage-*.tmp")))


def import_watching_the_stage(qfs, name: str, data: bytes, staged=staged_bytes) -> bool:
    """Import `data` as /states/<name>/statevector.npy, its last 4 MiB held back until
    `staged` (bytes, or files) is non-zero or 10 s have passed: whether the blob was being
    written before close."""
    (qfs.root / "states" / name).mkdir()
    fd = os.open(qfs.root / "states" / name / "statevector.npy", os.O_WRONLY | os.O_CREAT)
    try:
        all_but_a_chunk = len(data) - 4 * MIB
        write_all(fd, data[:all_but_a_chunk])
        deadline = time.monotonic() + 10
        while staged(qfs) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = staged(qfs) > 0
        assert os.fstat(fd).st_size == all_but_a_chunk
        write_all(fd, data, start=all_but_a_chunk)
    finally:
        os.close(fd)
    return seen


@pytest.mark.parametrize("precision", ["complex128", "complex64"])
def test_an_import_is_sealed_as_it_is_written(mount_factory, tmp_path, precision):
    qfs = streaming_mount(mount_factory, tmp_path, f"  amplitude_precision: {precision}\n")
    psi = off_unit_state(20, seed=7)  # 16 MiB: four chunks
    assert import_watching_the_stage(qfs, "s", npy_bytes(psi)), \
        "no chunk was sealed before close"
    target = qfs.root / "states" / "s" / "statevector.npy"
    meta = json.loads((qfs.root / "states" / "s" / "meta.json").read_text())
    assert meta["format"] == "statevector" and meta["precision"] == precision
    assert meta["format_reason"] == "the configured default" and meta["qubit_count"] == 20
    decoded = np.load(target)
    unit = psi / np.linalg.norm(psi)
    qiskit = state_fidelity(Statevector(unit), Statevector(decoded), validate=False)
    assert meta["fidelity"] >= 1 - 1e-12
    assert abs(meta["fidelity"] - qiskit) < 1e-12
    assert abs(np.vdot(decoded, decoded).real - 1) < 1e-12  # normalised at decode
    if precision == "complex128":
        assert meta["fidelity"] == 1.0
        assert np.allclose(decoded, unit, rtol=1e-15, atol=0)
    assert staged_bytes(qfs) == 0


def test_an_import_written_out_of_order_or_cut_short_commits_nothing(mount_factory,
                                                                     tmp_path):
    qfs = streaming_mount(mount_factory, tmp_path)
    psi = np.asarray(random_statevector(2**19, seed=3).data)  # 8 MiB: two chunks
    data = npy_bytes(psi)
    states = qfs.root / "states"
    (states / "x").mkdir()
    target = states / "x" / "statevector.npy"

    def refused(write) -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            write_all(fd, data[: 5 * MIB])
            with pytest.raises(OSError) as caught:
                write(fd)
            assert caught.value.errno == errno.EINVAL
        finally:
            with pytest.raises(OSError) as caught:
                os.close(fd)  # close() repeats the refusal: nothing commits
            assert caught.value.errno == errno.EINVAL
        assert os.listdir(states / "x") == []
        assert staged_bytes(qfs) == 0

    refused(lambda fd: os.pwrite(fd, data[:MIB], 0))  # back over sealed bytes
    refused(lambda fd: os.ftruncate(fd, MIB))
    refused(lambda fd: (write_all(fd, data, start=5 * MIB), os.write(fd, b"\0")))  # too long
    refused(lambda fd: os.ftruncate(fd, len(data) + 1))
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "start to end" in log and "cannot be cut" in log and "header gives" in log

    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    write_all(fd, data[: 6 * MIB])
    with pytest.raises(OSError) as caught:
        os.close(fd)
    assert caught.value.errno == errno.EINVAL
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    write_all(fd, npy_bytes(psi * 1.01))
    with pytest.raises(OSError) as caught:
        os.close(fd)  # the norm is known at the end: close() refuses (np.save cannot see it)
    assert caught.value.errno == errno.EINVAL
    nan = psi.copy()
    nan[-1] = np.nan
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    write_all(fd, npy_bytes(nan))
    with pytest.raises(OSError) as caught:
        os.close(fd)
    assert caught.value.errno == errno.EINVAL
    log = (qfs.root / ".qfs" / "log").read_text()
    assert "cut short" in log and "not normalised" in log and "NaN" in log
    assert os.listdir(states / "x") == [] and staged_bytes(qfs) == 0

    np.save(target, psi)  # the directory still takes a good import
    assert np.array_equal(np.load(target), psi / math.sqrt(np.vdot(psi, psi).real))
    (states / "padded").mkdir()  # header, state and 16 bytes more in one write
    fd = os.open(states / "padded" / "statevector.npy", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as caught:
        os.write(fd, npy_bytes(np.array([1, 0], dtype=complex)) + bytes(16))
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        os.close(fd)
    assert os.listdir(states / "padded") == [] and staged_bytes(qfs) == 0

    small = np.asarray(random_statevector(8, seed=1).data)  # one write: header and all
    (states / "small").mkdir()
    np.save(states / "small" / "statevector.npy", small)
    assert np.allclose(np.load(states / "small" / "statevector.npy"), small, rtol=1e-15, atol=0)


def test_holes_in_an_import_read_as_zeros(mount_factory, tmp_path):
    """cp --sparse=always seeks over runs of zeros and ends with a truncate: the holes it
    leaves are zeros, as in any file, and the state imports whole."""
    qfs = streaming_mount(mount_factory, tmp_path)
    psi = np.zeros(2**20, dtype=complex)  # 16 MiB, the middle half and the end zeros
    psi[: 2**18] = random_statevector(2**18, seed=9).data
    psi[2**19 : 2**19 + 2**17] = random_statevector(2**17, seed=10).data
    psi /= np.linalg.norm(psi)
    np.save(tmp_path / "psi.npy", psi)
    (qfs.root / "states" / "holes").mkdir()
    target = qfs.root / "states" / "holes" / "statevector.npy"
    subprocess.run(["cp", "--sparse=always", str(tmp_path / "psi.npy"), str(target)],
                   check=True)
    assert np.array_equal(np.load(target), psi / math.sqrt(np.vdot(psi, psi).real))
    (qfs.root / "states" / "seek").mkdir()
    data = npy_bytes(psi)
    fd = os.open(qfs.root / "states" / "seek" / "statevector.npy", os.O_WRONLY | os.O_CREAT)
    os.write(fd, data[: 5 * MIB])
    os.pwrite(fd, data[8 * MIB + 128 : 10 * MIB + 128], 8 * MIB + 128)  # zeros skipped
    os.ftruncate(fd, len(data))
    os.close(fd)
    assert np.array_equal(np.load(qfs.root / "states" / "seek" / "statevector.npy"),
                          np.load(target))
    # A preallocating writer makes the file long first, then writes from the start: such
    # a file is held until close, as before streaming, and imports.
    (qfs.root / "states" / "preallocated").mkdir()
    fd = os.open(qfs.root / "states" / "preallocated" / "statevector.npy",
                 os.O_WRONLY | os.O_CREAT)
    os.ftruncate(fd, len(data))
    write_all(fd, data)
    os.close(fd)
    assert np.array_equal(np.load(qfs.root / "states" / "preallocated" / "statevector.npy"),
                          np.load(target))


def test_a_streamed_import_holds_no_write_budget(mount_factory, tmp_path):
    """The per-user bound on bytes held in files being written does not count a streamed
    import, which holds a few chunks, not its bytes: a 64 MiB state imports under a 16 MiB
    bound, and a file that is buffered is still refused over it."""
    qfs = streaming_mount(mount_factory, tmp_path,
                          "performance:\n  max_buffered_mb_per_user: 16\n")
    psi = np.asarray(random_statevector(2**22, seed=11).data)  # 64 MiB
    (qfs.root / "states" / "big").mkdir()
    np.save(qfs.root / "states" / "big" / "statevector.npy", psi)
    assert np.allclose(np.load(qfs.root / "states" / "big" / "statevector.npy"), psi,
                       rtol=1e-14, atol=0)
    (qfs.root / "states" / "mixed").mkdir()
    rho = np.eye(2**11) / 2**11  # 64 MiB density matrix: held until close
    with pytest.raises(OSError) as caught:
        np.save(qfs.root / "states" / "mixed" / "density_matrix.npy", rho)
    assert caught.value.errno == errno.ENOSPC


def qiskit_fidelity(given: np.ndarray, path: Path) -> float:
    unit = given / np.linalg.norm(given)
    return state_fidelity(Statevector(unit), Statevector(np.load(path)), validate=False)


def test_an_auto_import_of_a_dense_state_is_sealed_as_it_is_written(mount_factory):
    """Under the default `auto` format a dense entangled state is settled as a state
    vector by the evidence its chunks give (more than 2^20 non-zeros, more than an eighth,
    full Schmidt rank across qubits 0..5), so it is sealed as written, like the
    statevector default; a state of 2^20 amplitudes or fewer is held until close."""
    qfs = mount_factory()
    psi = off_unit_state(21, seed=21)  # 32 MiB
    assert import_watching_the_stage(qfs, "dense", npy_bytes(psi))
    meta = json.loads((qfs.root / "states" / "dense" / "meta.json").read_text())
    assert meta["format"] == "statevector" and meta["chunked"]
    assert meta["format_reason"] == "dense and entangled: Schmidt rank 64 across qubits 0..5"
    assert meta["fidelity"] == 1.0
    assert qiskit_fidelity(psi, qfs.root / "states" / "dense" / "statevector.npy") \
        == pytest.approx(1, abs=1e-12)
    small = off_unit_state(20, seed=20)  # 16 MiB
    assert not import_watching_the_stage(qfs, "small", npy_bytes(small), staged_files)
    meta = json.loads((qfs.root / "states" / "small" / "meta.json").read_text())
    assert meta["format"] == "statevector"
    assert meta["format_reason"] == "dense and entangled: Schmidt rank 64 across qubits 0..5"
    assert staged_bytes(qfs) == 0


def sparse_state(qubits: int, seed: int) -> np.ndarray:
    """Random amplitudes on a sixteenth of the basis states."""
    rng = np.random.default_rng(seed)
    psi = np.zeros(2**qubits, dtype=complex)
    support = rng.choice(2**qubits, 2**qubits // 16, replace=False)
    psi[support] = rng.normal(size=support.size) + 1j * rng.normal(size=support.size)
    return psi / np.linalg.norm(psi)


def ghz_state(qubits: int) -> np.ndarray:
    psi = np.zeros(2**qubits, dtype=complex)
    psi[0] = psi[-1] = 1 / math.sqrt(2)
    return psi


def product_state(qubits: int, seed: int) -> np.ndarray:
    """A random single-qubit state on each qubit: dense, yet a bond-1 MPS."""
    psi = np.ones(1, dtype=complex)
    for q in range(qubits):
        psi = np.kron(np.asarray(random_statevector(2, seed=seed + q).data), psi)
    return psi


@pytest.mark.parametrize(("state", "chosen", "reason"), [
    (sparse_state(21, seed=4), "sparse", "131072 of 2097152 amplitudes are non-zero"),
    (ghz_state(21), "stabilizer", "a stabilizer (Clifford) state"),
    (product_state(21, seed=5), "mps", "low entanglement: bond dimension 1 is exact"),
], ids=["sparse", "ghz", "product"])
def test_an_auto_import_its_evidence_leaves_open_is_chosen_for_whole(
        mount_factory, state, chosen, reason):
    """A state the streamed evidence cannot settle (few non-zeros, or a Schmidt rank an
    exact MPS may have) is still sealed as written, then read back from its chunks at
    close and chosen for as a state held whole; the speculative blob is dropped."""
    qfs = mount_factory()
    assert import_watching_the_stage(qfs, "s", npy_bytes(state), staged_files)
    meta = json.loads((qfs.root / "states" / "s" / "meta.json").read_text())
    assert (meta["format"], meta["format_reason"]) == (chosen, reason)
    assert not meta.get("chunked")
    assert qiskit_fidelity(state, qfs.root / "states" / "s" / "statevector.npy") \
        == pytest.approx(1, abs=1e-12)
    assert staged_bytes(qfs) == 0
    assert len(list((qfs.data / "blobs").glob("??/*"))) == 1  # the speculative one went


def test_an_auto_import_chosen_for_whole_holds_the_write_budget(mount_factory, tmp_path):
    """The read-back of an import its evidence left open puts the whole state in the
    daemon's memory: it holds the importer's write budget meanwhile, so over
    max_buffered_mb_per_user close() is ENOSPC and nothing is stored, as the file held
    until close would have been refused at its writes; a dense state, settled as it
    streams, holds none."""
    config = tmp_path / "qfs.yaml"
    config.write_text("performance:\n  max_buffered_mb_per_user: 16\n")
    qfs = mount_factory(extra=["--config", str(config)])
    states = qfs.root / "states"
    (states / "sparse").mkdir()
    fd = os.open(states / "sparse" / "statevector.npy", os.O_WRONLY | os.O_CREAT)
    write_all(fd, npy_bytes(sparse_state(21, seed=6)))  # 32 MiB, streamed
    with pytest.raises(OSError) as caught:
        os.close(fd)  # (np.save would not see this: it ignores close())
    assert caught.value.errno == errno.ENOSPC
    assert "performance.max_buffered_mb_per_user" in (qfs.root / ".qfs" / "log").read_text()
    assert os.listdir(states / "sparse") == [] and staged_files(qfs) == 0
    assert list((qfs.data / "blobs").glob("??/*")) == []
    (states / "dense").mkdir()
    psi = off_unit_state(21, seed=8)
    np.save(states / "dense" / "statevector.npy", psi)
    assert qiskit_fidelity(psi, states / "dense" / "statevector.npy") \
        == pytest.approx(1, abs=1e-12)
