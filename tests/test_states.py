"""Level 2 through the mount: checkpoints of live task states, every format, import,
encryption and tampering, incremental checkpoints, retention and size limits."""

import errno
import io
import json
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from qiskit import qasm3
from qiskit.quantum_info import (
    DensityMatrix,
    Statevector,
    entropy,
    partial_trace,
    random_statevector,
    random_unitary,
    state_fidelity,
)

from levels.store.meta import LmdbMetaStore
from tests.conftest import QFSMOUNT
from tests.test_qubits import command, refused

pytestmark = pytest.mark.fuse

ENTANGLED = """OPENQASM 3.0;
include "stdgates.inc";
qubit[4] q;
ry(0.4) q[0];
h q[1];
cx q[1], q[2];
rz(0.3) q[2];
cx q[0], q[3];
ry(1.2) q[3];
"""
CLIFFORD = """OPENQASM 3.0;
include "stdgates.inc";
qubit[4] q;
h q[0];
cx q[0], q[1];
s q[1];
cx q[1], q[2];
h q[3];
"""
EXACT = {"statevector", "density_matrix", "stabilizer", "sparse"}


def expected_state(source: str) -> Statevector:
    return Statevector(qasm3.loads(source))


def prepared_task(qfs, task: str, source: str = ENTANGLED, circuit: str = "prep") -> None:
    if not (qfs.circuits / circuit).exists():
        qfs.write_circuit(circuit, source)
    command(qfs.qubits / "ctl", f"alloc 4 task={task} topology=linear")
    command(qfs.qubits / "tasks" / task / "ctl", f"apply {circuit}")


def meta_of(qfs, name: str) -> dict:
    return json.loads((qfs.root / "states" / name / "meta.json").read_text())


def npy(qfs, name: str, kind: str = "statevector") -> np.ndarray:
    return np.load(qfs.root / "states" / name / f"{kind}.npy")


def test_checkpoint_then_restore_onto_other_qubits(qfs):
    prepared_task(qfs, "a")
    ctl = qfs.qubits / "tasks" / "a" / "ctl"
    command(ctl, "checkpoint c1 format=statevector")
    assert sorted(os.listdir(qfs.root / "states" / "c1")) == ["blob", "lineage", "meta.json",
                                                               "statevector.npy"]
    meta = meta_of(qfs, "c1")
    assert meta["task"] == "a" and meta["qubit_count"] == 4 and meta["format"] == "statevector"
    assert meta["encrypted"] is True and meta["stored_bytes"] == os.stat(
        qfs.root / "states" / "c1" / "blob").st_size
    for key in ("fidelity", "compression_ratio", "entanglement_entropy", "raw_bytes",
                "created", "expires", "parent", "stage"):
        assert key in meta
    saved = npy(qfs, "c1")
    assert state_fidelity(Statevector(saved), expected_state(ENTANGLED)) > 1 - 1e-12
    command(qfs.qubits / "ctl", "alloc 4 task=b topology=linear")
    command(qfs.qubits / "tasks" / "b" / "ctl", "restore c1")
    state_a = json.loads((qfs.qubits / "tasks" / "a" / "state.json").read_text())
    state_b = json.loads((qfs.qubits / "tasks" / "b" / "state.json").read_text())
    assert not set(state_a["qubits"]) & set(state_b["qubits"])
    restored = state_b["live"]["restored"]
    assert restored["checkpoint"] == "c1" and restored["fidelity"] > 1 - 1e-12
    command(qfs.qubits / "tasks" / "b" / "ctl", "checkpoint c2 format=statevector")
    assert state_fidelity(Statevector(npy(qfs, "c2")), Statevector(saved)) > 1 - 1e-12


@pytest.mark.parametrize("fmt", ["statevector", "density_matrix", "mps", "stabilizer",
                                 "shadow", "sparse", "low_rank"])
def test_every_format_round_trips_with_honest_fidelity(qfs, fmt):
    source = CLIFFORD if fmt == "stabilizer" else ENTANGLED
    prepared_task(qfs, "f", source)
    command(qfs.qubits / "tasks" / "f" / "ctl", f"checkpoint s format={fmt}")
    meta = meta_of(qfs, "s")
    assert meta["format"] == fmt
    kind = meta["decodes_to"]
    decoded = npy(qfs, "s", kind)
    exact = expected_state(source)
    measured = state_fidelity(Statevector(decoded) if kind == "statevector"
                              else DensityMatrix(decoded), exact)
    if fmt in EXACT:
        assert measured > 1 - 1e-12 and meta["fidelity"] > 1 - 1e-12
    else:
        assert abs(meta["fidelity"] - measured) < 0.01


def test_automatic_format_choice_says_why(qfs):
    prepared_task(qfs, "c", CLIFFORD, circuit="cliff")
    command(qfs.qubits / "tasks" / "c" / "ctl", "checkpoint auto1")
    assert meta_of(qfs, "auto1")["format"] == "stabilizer"
    assert "stabilizer" in meta_of(qfs, "auto1")["format_reason"]
    command(qfs.qubits / "ctl", "alloc 4 task=z")
    command(qfs.qubits / "tasks" / "z" / "ctl", "checkpoint zero")  # |0000>: a stabilizer
    assert meta_of(qfs, "zero")["format"] == "stabilizer"
    product = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[4] q;\n" + "".join(
        f"ry({0.3 + i / 5}) q[{i}];\nrz({0.2 * i}) q[{i}];\n" for i in range(4))
    prepared_task(qfs, "p", product, circuit="product")
    command(qfs.qubits / "tasks" / "p" / "ctl", "checkpoint prod")
    assert meta_of(qfs, "prod")["format"] == "mps"
    assert meta_of(qfs, "prod")["entanglement_entropy"] == pytest.approx(0, abs=1e-9)


def _import(qfs, name: str, array, filename: str = "statevector.npy") -> None:
    (qfs.root / "states" / name).mkdir(exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, array)
    with open(qfs.root / "states" / name / filename, "wb") as f:
        f.write(buffer.getvalue())


def test_profiles_fall_back_to_a_format_that_holds_the_state(mount_factory):
    nisq = mount_factory(extra=["--profile", "nisq"])
    wide, dense = (np.asarray(random_statevector(2**n, seed=n).data) for n in (10, 6))
    _import(nisq, "wide", wide)  # shadows are reconstructed up to 8 qubits only
    _import(nisq, "dense", dense)  # a 6-qubit shadow keeps a fidelity near 0.5
    for name, vector in (("wide", wide), ("dense", dense)):
        meta = meta_of(nisq, name)
        assert meta["format"] == "statevector", meta
        assert meta["format_reason"].startswith("the default shadow")
        assert state_fidelity(Statevector(npy(nisq, name)), Statevector(vector)) > 1 - 1e-12
    assert "cannot hold this state" in meta_of(nisq, "wide")["format_reason"]
    assert "below migration_fidelity_threshold 0.95" in meta_of(nisq, "dense")["format_reason"]
    nisq.stop()
    simulation = mount_factory(extra=["--profile", "simulation"])
    rho = DensityMatrix(expected_state(ENTANGLED)).data * 0.5 + np.eye(16) / 32
    _import(simulation, "mixed", rho, "density_matrix.npy")
    meta = meta_of(simulation, "mixed")
    assert meta["format"] == "density_matrix" and "the default statevector cannot hold" in \
        meta["format_reason"]
    assert state_fidelity(DensityMatrix(npy(simulation, "mixed", "density_matrix")),
                          DensityMatrix(rho)) > 1 - 1e-12


def test_automatic_choice_finds_low_entanglement_at_any_size(qfs):
    product = np.ones(1)
    for q in range(16):
        theta = 0.3 + q / 7
        product = np.kron([np.cos(theta), np.sin(theta) * np.exp(0.2j * q)], product)
    _import(qfs, "product16", product)
    meta = meta_of(qfs, "product16")
    assert meta["format"] == "mps" and meta["stored_bytes"] < 20_000, meta
    assert meta["entanglement_entropy"] == pytest.approx(0, abs=1e-9)
    assert state_fidelity(Statevector(npy(qfs, "product16")), Statevector(product)) > 1 - 1e-12
    dense = np.asarray(random_statevector(2**16, seed=16).data)
    _import(qfs, "dense16", dense)
    assert meta_of(qfs, "dense16")["format"] == "statevector"
    assert "Schmidt rank 64 across qubits 0..5" in meta_of(qfs, "dense16")["format_reason"]


def test_auto_checkpoints_of_large_live_states_choose_as_their_imports_did(qfs):
    """Under `auto`, a live state over 2^20 amplitudes that looks dense is sealed as a
    state vector first and its chunks' evidence decides: the format and reason are those
    its import got, whether the guess holds (dense), is dropped for the whole-state
    choice (every other row across the cut zero), or is never made (dense only in its
    first amplitudes: sparse), and each reads back as it was."""
    n = 21
    dense = np.asarray(random_statevector(2**n, seed=n).data)
    halves = dense.copy()
    halves.reshape(-1, 64)[1::2] = 0
    halves /= np.linalg.norm(halves)
    head = np.zeros(2**n, dtype=complex)
    head[: 2**16] = dense[: 2**16]
    head /= np.linalg.norm(head)
    for name, state, chosen in (("dense", dense, "statevector"),
                                ("halves", halves, "statevector"), ("head", head, "sparse")):
        _import(qfs, f"{name}-in", state)
        command(qfs.qubits / "ctl", f"alloc {n} task={name} topology=linear")
        ctl = qfs.qubits / "tasks" / name / "ctl"
        command(ctl, f"restore {name}-in")
        command(ctl, f"checkpoint {name}-out")
        meta = meta_of(qfs, f"{name}-out")
        assert meta["format"] == chosen
        assert meta["format_reason"] == meta_of(qfs, f"{name}-in")["format_reason"]
        assert state_fidelity(Statevector(npy(qfs, f"{name}-out")), Statevector(state)) \
            > 1 - 1e-12
        command(qfs.qubits / "ctl", f"release task={name}")


def test_import_npy_and_refusals(qfs, tmp_path):
    psi = np.asarray(expected_state(ENTANGLED).data)
    np.save(tmp_path / "psi.npy", psi)
    (qfs.root / "states" / "imported").mkdir()
    subprocess.run(["cp", str(tmp_path / "psi.npy"),
                    str(qfs.root / "states" / "imported" / "statevector.npy")], check=True)
    assert meta_of(qfs, "imported")["qubit_count"] == 4
    decoded = npy(qfs, "imported", meta_of(qfs, "imported")["decodes_to"])
    assert state_fidelity(Statevector(decoded), Statevector(psi)) > 1 - 1e-12
    for bad in (psi * 2, psi[:12] / np.linalg.norm(psi[:12]), np.array([np.nan, 0, 0, 1.0]),
                np.zeros((2, 2, 2))):
        with pytest.raises(OSError) as caught:
            _import(qfs, "bad", bad)
        assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError) as caught:
        _import(qfs, "bad", psi, filename="notes.txt")
    assert caught.value.errno == errno.EINVAL
    assert os.listdir(qfs.root / "states" / "bad") == []
    assert "not normalised" in (qfs.root / ".qfs" / "log").read_text()
    # np.save closes a duplicate of its descriptor first and ignores that close's error:
    # the refusal is said again at the last close, which it does hear.
    with pytest.raises(OSError) as caught:
        np.save(qfs.root / "states" / "bad" / "statevector.npy", np.ones(8, complex))
    assert caught.value.errno == errno.EINVAL
    assert os.listdir(qfs.root / "states" / "bad") == []
    rho = np.outer(psi, psi.conj()) * 0.5 + np.eye(16) * 0.5 / 16
    _import(qfs, "mixed", rho, "density_matrix.npy")
    assert meta_of(qfs, "mixed")["format"] == "density_matrix"
    assert np.allclose(npy(qfs, "mixed", "density_matrix"), rho)


def test_tar_x_over_a_checkpoint_ends_and_changes_nothing(qfs, tmp_path):
    """tar x unlinks each file its O_EXCL create meets and creates it again: rm of a
    checkpoint's file deletes nothing yet hides it until the directory is listed, so the
    create is refused (EACCES) instead of meeting the same file forever."""
    psi = np.asarray(expected_state(ENTANGLED).data)
    _import(qfs, "kept", psi)
    states = qfs.root / "states"
    before = {name: (states / "kept" / name).read_bytes() for name in os.listdir(states / "kept")}
    subprocess.run(["tar", "cf", str(tmp_path / "s.tar"), "-C", str(qfs.root), "states"],
                   check=True)
    for _ in range(2):
        done = subprocess.run(["tar", "xf", str(tmp_path / "s.tar"), "-C", str(qfs.root)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Permission denied" in done.stderr, done.stderr
    assert "states are imported into a new directory" in (qfs.root / ".qfs" / "log").read_text()
    assert sorted(os.listdir(states / "kept")) == sorted(before)  # shown again once listed
    os.unlink(states / "kept" / "blob")
    assert not (states / "kept" / "blob").exists()
    assert sorted(os.listdir(states / "kept")) == sorted(before)
    assert {name: (states / "kept" / name).read_bytes() for name in before} == before
    subprocess.run(["rm", "-r", str(states / "kept")], check=True)
    assert os.listdir(states) == []


def test_state_files_ask_tools_for_one_mib_per_request(qfs, tmp_path):
    """statevector.npy, blob and an import being written say FUSE's 1 MiB request size as
    st_blksize, so cp and Python buffer by it; a circuit keeps the page size. The import
    cp then makes still reads back bit for bit."""
    rng = np.random.default_rng(7)
    psi = rng.standard_normal(2**12) + 1j * rng.standard_normal(2**12)
    psi /= np.linalg.norm(psi)
    np.save(tmp_path / "psi.npy", psi)
    target = qfs.root / "states" / "big"
    target.mkdir()
    with open(target / "statevector.npy", "wb") as importing:
        assert os.fstat(importing.fileno()).st_blksize == 1 << 20
        importing.write((tmp_path / "psi.npy").read_bytes())
    for name in ("statevector.npy", "blob"):
        assert os.stat(target / name).st_blksize == 1 << 20
    assert np.array_equal(np.load(target / "statevector.npy"), psi)
    bell = qfs.write_circuit("bell")
    assert os.stat(bell / "latest.qasm").st_blksize == 4096


def as_nobody(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "bash", "-c", script], capture_output=True, text=True, timeout=60)


def test_owners_pin_only_their_own_parents_and_alone_read_their_states(mount_factory):
    base = Path(tempfile.mkdtemp(prefix="qfs-owner-"))
    base.chmod(0o755)  # the mountpoint must be reachable for nobody
    qfs = mount_factory(base=base)
    states = qfs.root / "states"
    prepared_task(qfs, "r")
    command(qfs.qubits / "tasks" / "r" / "ctl", "checkpoint rootc format=statevector")
    ctl = qfs.qubits / "tasks" / "n" / "ctl"
    done = as_nobody(f"echo 'alloc 4 task=n' > {qfs.qubits / 'ctl'} && "
                     f"echo 'apply prep' > {ctl} && "
                     f"echo 'checkpoint mine format=statevector' > {ctl} && "
                     f"echo 'checkpoint kid format=statevector parent=mine' > {ctl}")
    assert done.returncode == 0, done.stderr
    done = as_nobody(f"echo 'checkpoint child parent=rootc retention=3650d' > {ctl}")
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert "parent rootc belongs to uid 0" in (qfs.root / ".qfs" / "log").read_text()
    psi = np.asarray(expected_state(ENTANGLED).data)
    np.save(base / "psi.npy", psi)
    done = as_nobody(f"mkdir {states / 'imp'} && cp {base / 'psi.npy'} "
                     f"{states / 'imp' / 'statevector.npy'}")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(states)) == ["imp", "kid", "mine", "rootc"]
    for name, uid in (("rootc", 0), ("mine", 65534), ("kid", 65534), ("imp", 65534)):
        for leaf, mode in (("statevector.npy", 0o400), ("blob", 0o400), ("meta.json", 0o444)):
            st = os.stat(states / name / leaf)
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (mode, uid), (name, leaf)
    done = as_nobody(f"cat {states / 'mine' / 'statevector.npy'} "
                     f"{states / 'imp' / 'blob'} >/dev/null")
    assert done.returncode == 0, done.stderr
    for leaf in ("statevector.npy", "blob"):
        done = as_nobody(f"cat {states / 'rootc' / leaf} >/dev/null")
        assert done.returncode != 0 and "Permission denied" in done.stderr
    done = as_nobody(f"rm -rf {states / 'rootc'}")
    assert done.returncode != 0 and (states / "rootc" / "meta.json").exists()
    subprocess.run(["rm", "-r", str(states / "rootc")], check=True)  # nothing pins it
    done = as_nobody(f"rm -r {states / 'kid'} {states / 'mine'} {states / 'imp'}")
    assert done.returncode == 0, done.stderr
    assert os.listdir(states) == []


def test_np_save_of_a_refused_state_fails_at_its_first_write(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("state_store:\n  max_checkpoint_size_mb: 1\n")
    qfs = mount_factory(extra=["--config", str(config)])
    states = qfs.root / "states"
    big = np.zeros(2**17, dtype=complex)  # 2 MiB of amplitudes
    big[0] = 1
    cases = [("statevector.npy", np.ones(3) / np.sqrt(3), errno.EINVAL),
             ("statevector.npy", np.eye(4) / 4, errno.EINVAL),
             ("density_matrix.npy", np.ones(4) / 2, errno.EINVAL),
             ("density_matrix.npy", np.ones((4, 2)) / 2, errno.EINVAL),
             ("statevector.npy", np.array(["0", "1"]), errno.EINVAL),
             ("statevector.npy", np.array([1, None, 0, 0], dtype=object), errno.EINVAL),
             ("statevector.npy", big, errno.EFBIG)]
    for i, (filename, array, expected) in enumerate(cases):
        (states / f"x{i}").mkdir()
        with pytest.raises(OSError) as caught:
            np.save(states / f"x{i}" / filename, array)
        assert caught.value.errno == expected, (filename, array.dtype, array.shape)
        assert os.listdir(states / f"x{i}") == []
    assert "max_checkpoint_size_mb=1" in (qfs.root / ".qfs" / "log").read_text()
    # Byte by byte: the write() that completes the header is refused.
    header = npy_header(np.ones(3) / np.sqrt(3))
    (states / "slow").mkdir()
    fd = os.open(states / "slow" / "statevector.npy", os.O_WRONLY | os.O_CREAT)
    try:
        for i in range(len(header) - 1):
            os.write(fd, header[i : i + 1])
        with pytest.raises(OSError) as caught:
            os.write(fd, header[-1:])
        assert caught.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError):
            os.close(fd)  # and close() refuses what it holds too
    # The values wait for close(): a good header of a vector that is not normalised.
    (states / "late").mkdir()
    fd = os.open(states / "late" / "statevector.npy", os.O_WRONLY | os.O_CREAT)
    os.write(fd, npy_bytes_of(np.ones(4)))
    with pytest.raises(OSError) as caught:
        os.close(fd)
    assert caught.value.errno == errno.EINVAL
    np.save(states / "late" / "statevector.npy", np.ones(4) / 2)
    assert np.allclose(npy(qfs, "late"), np.ones(4) / 2)


def npy_bytes_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(array: np.ndarray) -> bytes:
    data = npy_bytes_of(array)
    return data[: len(data) - array.nbytes]


def strict_json(path: Path) -> dict:
    """JSON as strict parsers read it: NaN and Infinity are not JSON."""
    def reject(constant: str):
        raise ValueError(f"{constant} in {path}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_meta_json_is_strict_json_and_names_the_entropy_cut(qfs):
    prepared_task(qfs, "p")
    command(qfs.qubits / "tasks" / "p" / "ctl", "checkpoint pure format=statevector")
    meta = strict_json(qfs.root / "states" / "pure" / "meta.json")
    exact = expected_state(ENTANGLED)
    assert meta["entanglement_entropy_cut"] == [0, 1]
    assert meta["entanglement_entropy"] == pytest.approx(
        entropy(partial_trace(exact, [2, 3]), base=2), abs=1e-9)
    wide = random_statevector(2**14, seed=5)
    _import(qfs, "wide", np.asarray(wide.data))
    meta = strict_json(qfs.root / "states" / "wide" / "meta.json")
    assert meta["entanglement_entropy_cut"] == list(range(6))
    assert meta["entanglement_entropy"] == pytest.approx(
        entropy(partial_trace(wide, list(range(6, 14))), base=2), abs=1e-9)
    rho = DensityMatrix(exact).data * 0.7 + np.eye(16) * 0.3 / 16
    _import(qfs, "mixed", rho, "density_matrix.npy")
    meta = strict_json(qfs.root / "states" / "mixed" / "meta.json")
    assert meta["entanglement_entropy"] is None and meta["entanglement_entropy_cut"] is None
    assert "mixed state" in meta["entanglement_entropy_reason"]


def test_density_matrix_within_tolerance_is_projected_onto_a_state(qfs):
    u = random_unitary(4, seed=3).data
    rho = u @ np.diag([0.6, 0.4 + 9e-7, 0.0, -9e-7]) @ u.conj().T
    assert not DensityMatrix(rho).is_valid()
    _import(qfs, "edge", rho, "density_matrix.npy")
    served = npy(qfs, "edge", "density_matrix")
    assert DensityMatrix(served).is_valid() and np.linalg.eigvalsh(served).min() > -1e-12
    distance = np.linalg.svd(rho - served, compute_uv=False).sum() / 2
    meta = strict_json(qfs.root / "states" / "edge" / "meta.json")
    assert meta["projection_trace_distance"] == pytest.approx(distance, abs=1e-12)
    assert 5e-7 < distance < 2e-6
    u = random_unitary(4, seed=4).data
    with pytest.raises(OSError) as caught:  # beyond the 1e-6 tolerance: refused
        _import(qfs, "negative", u @ np.diag([0.6, 0.4 + 3e-6, 0.0, -3e-6]) @ u.conj().T,
                "density_matrix.npy")
    assert caught.value.errno == errno.EINVAL
    assert "not positive semidefinite" in (qfs.root / ".qfs" / "log").read_text()


@pytest.mark.damages_data
def test_tampered_swapped_or_wrongly_keyed_blobs_are_refused(mount_factory, tmp_path):
    qfs = mount_factory()
    prepared_task(qfs, "t")
    ctl = qfs.qubits / "tasks" / "t" / "ctl"
    command(ctl, "checkpoint good format=statevector")
    command(ctl, "checkpoint twin format=statevector")
    blob_of = {n: qfs.root / "states" / n / "blob" for n in ("good", "twin")}
    stored = {n: p.read_bytes() for n, p in blob_of.items()}
    key = qfs.data / "state.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_bytes() not in (qfs.data / "qfs.log").read_bytes()
    qfs.stop()
    files = {p.read_bytes(): p for p in (qfs.data / "blobs").glob("??/*")}
    good_file, twin_file = files[stored["good"]], files[stored["twin"]]
    tampered = bytearray(stored["good"])
    tampered[len(tampered) // 2] ^= 1
    good_file.write_bytes(bytes(tampered))
    twin_file.write_bytes(stored["good"])  # a blob moved under another checkpoint
    second = mount_factory(data=qfs.data)
    for name in ("good", "twin"):
        with pytest.raises(OSError) as caught:
            npy(second, name)
        assert caught.value.errno == errno.EIO
    assert "authentication failed" in (second.root / ".qfs" / "log").read_text()
    second.stop()
    good_file.write_bytes(stored["good"])
    other_key = tmp_path / "other.key"
    third = mount_factory(data=qfs.data, extra=["--key-file", str(other_key)])
    with pytest.raises(OSError) as caught:
        npy(third, "good")
    assert caught.value.errno == errno.EIO
    command(third.qubits / "ctl", "alloc 4 task=r")
    assert refused(third.qubits / "tasks" / "r" / "ctl", "restore good") == errno.EIO


def test_unencrypted_checkpoint(qfs):
    prepared_task(qfs, "u")
    command(qfs.qubits / "tasks" / "u" / "ctl", "checkpoint plain format=statevector encrypt=0")
    assert meta_of(qfs, "plain")["encrypted"] is False
    assert (qfs.root / "states" / "plain" / "blob").read_bytes()[:5] == b"QFS2\x02"  # chunked


def test_incremental_checkpoint_stores_only_the_change(qfs):
    big = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[10] q;\n" + "".join(
        f"h q[{i}];\nrz({0.1 * i + 0.05}) q[{i}];\ncx q[{i}], q[{(i + 1) % 10}];\n"
        for i in range(10))
    # A change confined to a quarter of the amplitudes (those with q9 = q8 = 1).
    nudge = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[10] q;\nccx q[9], q[8], q[7];\n"
    qfs.write_circuit("big", big)
    qfs.write_circuit("nudge", nudge)
    command(qfs.qubits / "ctl", "alloc 10 task=i")
    ctl = qfs.qubits / "tasks" / "i" / "ctl"
    command(ctl, "apply big")
    command(ctl, "checkpoint base format=statevector")
    command(ctl, "apply nudge")
    command(ctl, "checkpoint full format=statevector")
    command(ctl, "checkpoint delta format=statevector parent=base")
    command(ctl, "checkpoint chosen format=auto parent=base")  # the automatic choice's
    assert np.allclose(npy(qfs, "chosen"), npy(qfs, "full"))
    assert meta_of(qfs, "chosen")["parent"] == "base"
    subprocess.run(["rm", "-r", str(qfs.root / "states" / "chosen")], check=True)
    base, full, delta = (meta_of(qfs, n) for n in ("base", "full", "delta"))
    assert delta["parent"] == "base"
    assert delta["stored_bytes"] < 0.5 * full["stored_bytes"], (delta, full)
    assert np.allclose(npy(qfs, "delta"), npy(qfs, "full"))
    done = subprocess.run(["rm", "-r", str(qfs.root / "states" / "base")], capture_output=True,
                          text=True)
    assert done.returncode != 0 and "Directory not empty" in done.stderr
    assert (qfs.root / "states" / "base" / "meta.json").exists()
    subprocess.run(["rm", "-r", str(qfs.root / "states" / "delta")], check=True)
    subprocess.run(["rm", "-r", str(qfs.root / "states" / "base")], check=True)
    assert sorted(os.listdir(qfs.root / "states")) == ["full"]
    assert base["format"] == "statevector"


def stored_checkpoints(data: Path) -> set[str]:
    """The checkpoint records in LMDB, read beside the daemon (expired ones included)."""
    meta = LmdbMetaStore(data / "meta.lmdb", 1024)
    with meta.reading() as txn:
        names = {k.decode() for k, _v in txn.scan("checkpoints")}
    meta.close()
    return names


def wait_until_deleted(data: Path, name: str) -> None:
    deadline = time.monotonic() + 20
    while name in stored_checkpoints(data):
        assert time.monotonic() < deadline, f"expired checkpoint {name} was never deleted"
        time.sleep(0.2)


def test_retention_expires_checkpoints(qfs):
    prepared_task(qfs, "e")
    command(qfs.qubits / "tasks" / "e" / "ctl", "checkpoint brief retention=1s")
    command(qfs.qubits / "tasks" / "e" / "ctl", "checkpoint stays")
    assert sorted(os.listdir(qfs.root / "states")) == ["brief", "stays"]
    time.sleep(1.2)
    wait_until_deleted(qfs.data, "brief")  # by the daemon's periodic task, with no listing
    assert stored_checkpoints(qfs.data) == {"stays"}
    assert os.listdir(qfs.root / "states") == ["stays"]
    assert not (qfs.root / "states" / "brief").exists()
    assert refused(qfs.qubits / "tasks" / "e" / "ctl", "restore brief") == errno.ENOENT


def test_retention_is_bounded_at_the_request(qfs):
    prepared_task(qfs, "r")
    ctl = qfs.qubits / "tasks" / "r" / "ctl"
    for retention in ("99999999999999999999d", "3651d", "0s", "0.5s", "-1d", "soon"):
        assert refused(ctl, f"checkpoint c retention={retention}") == errno.EINVAL
        assert ctl.read_text().startswith("error: EINVAL")
    assert "outside 1s..3650d" in (qfs.root / ".qfs" / "log").read_text()
    assert os.listdir(qfs.root / "states") == []
    command(ctl, "checkpoint c retention=3650d")
    meta = meta_of(qfs, "c")
    created, expires = (time.mktime(time.strptime(meta[k], "%Y-%m-%dT%H:%M:%SZ"))
                        for k in ("created", "expires"))
    assert expires - created == pytest.approx(3650 * 86400, abs=2)
    assert sorted(os.listdir(qfs.root / "states" / "c")) == ["blob", "lineage", "meta.json",
                                                              "statevector.npy"]


def test_size_limit_and_bad_requests(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("state_store:\n  max_checkpoint_size_mb: 0\n")
    qfs = mount_factory(extra=["--config", str(config)])
    prepared_task(qfs, "s")
    ctl = qfs.qubits / "tasks" / "s" / "ctl"
    assert refused(ctl, "checkpoint huge") == errno.EFBIG
    assert "max_checkpoint_size_mb" in ctl.read_text()
    assert os.listdir(qfs.root / "states") == []


def test_checkpoint_errors_change_nothing(qfs):
    prepared_task(qfs, "k")
    ctl = qfs.qubits / "tasks" / "k" / "ctl"
    command(ctl, "checkpoint once")
    assert refused(ctl, "checkpoint once") == errno.EEXIST
    assert refused(ctl, "checkpoint x format=hologram") == errno.EINVAL
    assert refused(ctl, "checkpoint y parent=nothing") == errno.ENOENT
    assert refused(ctl, "checkpoint z format=stabilizer") == errno.EINVAL
    assert refused(ctl, "restore nothing") == errno.ENOENT
    command(qfs.qubits / "ctl", "alloc 2 task=small")
    assert refused(qfs.qubits / "tasks" / "small" / "ctl", "restore once") == errno.EINVAL
    assert os.listdir(qfs.root / "states") == ["once"]


def test_a_state_needs_at_least_one_qubit(qfs):
    """A 1-amplitude vector or a 1x1 matrix is no qubit's state: EINVAL at the write()
    whose header shows it (np.save sees that), again at close, nothing stored."""
    states = qfs.root / "states"
    for i, (filename, array) in enumerate((("statevector.npy", np.array([1 + 0j])),
                                           ("density_matrix.npy", np.array([[1 + 0j]])))):
        (states / f"one{i}").mkdir()
        with pytest.raises(OSError) as caught:
            np.save(states / f"one{i}" / filename, array)
        assert caught.value.errno == errno.EINVAL, filename
        assert os.listdir(states / f"one{i}") == []
        assert not (states / f"one{i}" / filename).exists()
    assert "at least one qubit" in (qfs.root / ".qfs" / "log").read_text()
    # Written in pieces, the data after the header: refused at close all the same.
    data = npy_bytes_of(np.array([1 + 0j]))
    (states / "pieces").mkdir()
    fd = os.open(states / "pieces" / "statevector.npy", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as caught:
            os.write(fd, data)
        assert caught.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError) as caught:
            os.close(fd)
    assert caught.value.errno == errno.EINVAL
    assert sorted(os.listdir(states)) == ["one0", "one1", "pieces"]
    np.save(states / "one0" / "statevector.npy", np.array([1, 0], dtype=complex))
    assert meta_of(qfs, "one0")["qubit_count"] == 1


def test_a_checkpoint_fills_the_empty_directory_made_for_it(mount_factory):
    """`mkdir /states/x` then `checkpoint x`: the checkpoint fills the directory its owner
    made (as an import would); /states/x is then that checkpoint and nothing else. A
    directory another user made is EEXIST, and stays theirs to import into."""
    base = Path(tempfile.mkdtemp(prefix="qfs-fill-"))
    base.chmod(0o755)  # the mountpoint must be reachable for nobody
    qfs = mount_factory(base=base)
    states = qfs.root / "states"
    prepared_task(qfs, "t")
    ctl = qfs.qubits / "tasks" / "t" / "ctl"
    (states / "px").mkdir()
    command(ctl, "checkpoint px format=statevector")
    assert os.listdir(states) == ["px"]
    assert sorted(os.listdir(states / "px")) == ["blob", "lineage", "meta.json",
                                                 "statevector.npy"]
    assert meta_of(qfs, "px")["provenance"]["task"] == "t"
    assert state_fidelity(Statevector(npy(qfs, "px")), expected_state(ENTANGLED)) > 1 - 1e-12
    with pytest.raises(OSError) as caught:  # no longer a directory to import into
        np.save(states / "px" / "statevector.npy", np.array([1, 0], dtype=complex))
    assert caught.value.errno == errno.EACCES
    with pytest.raises(FileExistsError):
        (states / "px").mkdir()
    assert refused(ctl, "checkpoint px") == errno.EEXIST
    assert state_fidelity(Statevector(npy(qfs, "px")), expected_state(ENTANGLED)) > 1 - 1e-12
    done = as_nobody(f"mkdir {states / 'theirs'}")
    assert done.returncode == 0, done.stderr
    assert refused(ctl, "checkpoint theirs") == errno.EEXIST
    assert "theirs" in (qfs.root / ".qfs" / "log").read_text()
    assert os.listdir(states / "theirs") == []
    psi = np.asarray(expected_state(ENTANGLED).data)
    np.save(base / "psi.npy", psi)
    done = as_nobody(f"cp {base / 'psi.npy'} {states / 'theirs' / 'statevector.npy'}")
    assert done.returncode == 0, done.stderr
    assert meta_of(qfs, "theirs")["owner"] == 65534
    subprocess.run(["rm", "-r", str(states / "px"), str(states / "theirs")], check=True)
    assert os.listdir(states) == []


def test_an_expired_parent_stays_while_a_live_child_needs_it(qfs):
    """A child pinned, or with a longer retention, is decoded from its parents whatever
    their own retention: an expired parent a live child needs stays listed and readable
    (its name taken) until that child goes, then it expires."""
    prepared_task(qfs, "r6")
    ctl = qfs.qubits / "tasks" / "r6" / "ctl"
    states = qfs.root / "states"
    command(ctl, "checkpoint f1 retention=1s format=statevector")
    command(ctl, "checkpoint f2 retention=1s parent=f1 format=statevector")
    command(ctl, "checkpoint g1 retention=1s format=statevector")
    command(ctl, "checkpoint g2 retention=1h parent=g1 format=statevector")
    os.setxattr(states / "f2", "user.qfs.pinned", b"1")
    time.sleep(2.2)  # past every short retention, and a periodic expiry or two
    assert sorted(os.listdir(states)) == ["f1", "f2", "g1", "g2"]
    expected = expected_state(ENTANGLED)
    for name in ("f1", "f2", "g1", "g2"):
        assert state_fidelity(Statevector(npy(qfs, name)), expected) > 1 - 1e-12, name
        assert meta_of(qfs, name)["name"] == name
    assert [line.split("\t")[0] for line in
            (states / "f2" / "lineage").read_text().splitlines()] == ["f2", "f1"]
    command(qfs.qubits / "ctl", "alloc 4 task=r6b topology=linear")
    command(qfs.qubits / "tasks" / "r6b" / "ctl", "restore f2")
    command(qfs.qubits / "tasks" / "r6b" / "ctl", "restore g2")
    command(qfs.qubits / "tasks" / "r6b" / "ctl", "restore f1")
    with pytest.raises(FileExistsError):  # its name is taken, as its listing says
        (states / "f1").mkdir()
    assert refused(ctl, "checkpoint g1") == errno.EEXIST
    done = subprocess.run(["rm", "-r", str(states / "g1")], capture_output=True, text=True)
    assert done.returncode != 0 and "Directory not empty" in done.stderr
    # When the child goes, so does the parent it kept.
    subprocess.run(["rm", "-r", str(states / "g2")], check=True)
    os.removexattr(states / "f2", "user.qfs.pinned")
    for name in ("f2", "f1", "g1"):
        wait_until_deleted(qfs.data, name)
    assert os.listdir(states) == []
    assert refused(qfs.qubits / "tasks" / "r6b" / "ctl", "restore f1") == errno.ENOENT
    command(ctl, "checkpoint f1 format=statevector")  # the name is free again
    assert os.listdir(states) == ["f1"]


@pytest.mark.damages_data
def test_kill_during_checkpoint_leaves_no_partial_checkpoint(mount_factory, tmp_path):
    qfs = mount_factory()
    rng = np.random.default_rng(5)
    psi = rng.normal(size=2**20) + 1j * rng.normal(size=2**20)
    np.save(tmp_path / "big.npy", psi / np.linalg.norm(psi))
    (qfs.root / "states" / "big").mkdir()
    copier = subprocess.Popen(["cp", str(tmp_path / "big.npy"),
                               str(qfs.root / "states" / "big" / "statevector.npy")])
    time.sleep(0.4)  # mid-copy or mid-checkpoint
    qfs.proc.kill()
    qfs.proc.wait()
    copier.wait()
    subprocess.run(["fusermount3", "-u", "-z", str(qfs.root)], check=False)
    qfs.proc = None
    second = mount_factory(data=qfs.data)
    names = os.listdir(second.root / "states")
    if names:  # the checkpoint completed before the kill: then it is whole
        assert names == ["big"]
        assert np.allclose(npy(second, "big"), psi / np.linalg.norm(psi))
    referenced = {json.loads((second.root / "states" / n / "meta.json").read_text())["name"]
                  for n in names}
    assert referenced == set(names)
    second.stop()
    # At most a blob written before the kill and never referenced, which repair removes.
    done = subprocess.run([*QFSMOUNT, "--check", "--repair", "--data", str(qfs.data)],
                          capture_output=True, text=True, timeout=300)
    assert {json.loads(line)["kind"] for line in done.stdout.splitlines()} <= {"orphan_blob"}
    assert done.returncode == 0, done.stdout
