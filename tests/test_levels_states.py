"""Level 2 without FUSE: formats against qiskit.quantum_info, stabilizer detection, sealing."""

import json
import os
import time

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import (
    DensityMatrix,
    Statevector,
    random_clifford,
    random_statevector,
    state_fidelity,
)

from levels.config import load_config
from levels.errors import Corrupt, Exists, Invalid, NotFound
from levels.fabric import Fabric
from levels.stateformats import (
    FORMATS,
    FormatOptions,
    choose_format,
    decode,
    encode,
    qubits_of_shape,
    stabilizer_circuit,
    validate_state,
)
from levels.states import Request
from levels.store.sealed import Sealer, load_or_create_key

OPTIONS = FormatOptions(seed=7)


@pytest.mark.parametrize("seed", range(6))
def test_random_clifford_states_are_recognised_and_rebuilt(seed):
    vector = np.asarray(Statevector(random_clifford(5, seed=seed).to_circuit()).data)
    circuit, phase = stabilizer_circuit(vector)
    rebuilt = np.asarray(Statevector(circuit).data) * np.exp(1j * phase)
    anchor = np.flatnonzero(np.abs(vector) > 1e-9)[0]
    rebuilt *= abs(rebuilt[anchor]) / rebuilt[anchor] * vector[anchor] / abs(vector[anchor])
    assert np.allclose(rebuilt, vector, atol=1e-9)
    assert np.allclose(decode(encode(vector, "stabilizer", OPTIONS).payload), vector, atol=1e-9)


def test_non_stabilizer_states_are_not_mistaken():
    t_state = QuantumCircuit(2)
    t_state.h(0)
    t_state.t(0)
    t_state.cx(0, 1)
    for vector in (np.asarray(Statevector(t_state).data),
                   np.asarray(random_statevector(8, seed=1).data)):
        assert stabilizer_circuit(vector) is None


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "stabilizer"])
def test_formats_report_the_fidelity_they_deliver(fmt):
    vector = np.asarray(random_statevector(16, seed=3).data)
    encoded = encode(vector, fmt, OPTIONS)
    decoded = decode(encoded.payload)  # decoded afresh, as a restore would
    delivered = Statevector(decoded) if decoded.ndim == 1 else DensityMatrix(decoded)
    assert encoded.fidelity == pytest.approx(state_fidelity(delivered, Statevector(vector)),
                                             abs=1e-9)


def test_truncated_mps_and_sparse_lose_fidelity_honestly():
    vector = np.asarray(random_statevector(2**8, seed=4).data)
    mps = encode(vector, "mps", FormatOptions(mps_max_bond=2))
    assert 0 < mps.fidelity < 0.9
    sparse = encode(vector, "sparse", FormatOptions(sparse_threshold=1 / 256))
    kept = np.abs(vector) ** 2
    assert sparse.fidelity == pytest.approx(kept[kept > 1 / 256].sum(), abs=1e-9)


def test_choices_and_validation():
    assert choose_format(np.eye(4, dtype=complex)[0], OPTIONS)[0] == "stabilizer"
    assert choose_format(np.asarray(random_statevector(2**6, seed=2).data), OPTIONS)[0] == \
        "statevector"
    for bad in (np.ones(3) / np.sqrt(3), np.ones(4), np.ones((2, 3)), np.array(["a", "b"])):
        with pytest.raises(Invalid):
            validate_state(bad)


def test_sealing_detects_tampering_and_other_keys(tmp_path):
    key_path = tmp_path / "k"
    key = load_or_create_key(key_path)
    assert oct(os.stat(key_path).st_mode & 0o777) == oct(0o600)
    sealer = Sealer(key, threads=2)
    blob = sealer.seal(b"payload" * 100, b"ckpt-a", encrypt=True)
    assert sealer.unseal(blob, b"ckpt-a") == b"payload" * 100
    flipped = bytearray(blob)
    flipped[-3] ^= 0x40
    for bad_blob, aad, who in ((bytes(flipped), b"ckpt-a", sealer), (blob, b"ckpt-b", sealer),
                               (blob[:-1], b"ckpt-a", sealer),
                               (blob, b"ckpt-a", Sealer(os.urandom(32), threads=1))):
        with pytest.raises(Corrupt):
            who.unseal(bad_blob, aad)
    os.chmod(key_path, 0o644)
    with pytest.raises(Invalid):
        load_or_create_key(key_path)


def test_a_state_needs_at_least_one_qubit():
    for shape in ((1,), (1, 1)):
        with pytest.raises(Invalid, match="at least one qubit"):
            qubits_of_shape(shape)
    with pytest.raises(Invalid, match="at least one qubit"):
        validate_state(np.array([1 + 0j]))
    assert qubits_of_shape((2,)) == qubits_of_shape((2, 2)) == 1


def _store_checkpoint(states, name: str, **request) -> dict:
    vector = np.asarray(random_statevector(4, seed=2).data)
    return states.commit(states.prepare(Request(name, format="statevector", **request),
                                        vector))


def test_a_damaged_parent_field_ends_its_chain_not_the_listing(tmp_path):
    """A record whose `parent` is not a name (edited or damaged) is listed on its own;
    /states stays listable (qfsmount --check is where such a record is reported)."""
    fabric = Fabric(tmp_path / "data", load_config())
    try:
        _store_checkpoint(fabric.states, "a")
        with fabric.meta.writing() as txn:
            record = json.loads(txn.get("checkpoints", b"a"))
            txn.put("checkpoints", b"a", json.dumps({**record, "parent": ["x"]}).encode())
        assert fabric.states.names() == ["a"]
    finally:
        fabric.close()


def test_one_name_means_one_thing_past_retention_and_mkdir(tmp_path):
    """An expired checkpoint no child needs is gone at once (its name free before expire
    deletes it); a parent a live child needs stays shown, its name taken; a checkpoint
    fills an empty directory its owner made, not another user's."""
    fabric = Fabric(tmp_path / "data", load_config())
    states = fabric.states
    try:
        _store_checkpoint(states, "old", retention="1s")
        _store_checkpoint(states, "base", retention="1s")
        _store_checkpoint(states, "kid", retention="1h", parent="base")
        time.sleep(1.1)
        assert states.names() == ["base", "kid"]
        with pytest.raises(NotFound):
            states.get("old")
        states.make_pending("old", 0)  # free: the expired record goes first
        assert "old" not in states.names() and "old" in states.pending
        assert states.load("kid")[1].shape == (4,)
        assert states.get("base")["name"] == "base"
        with pytest.raises(Exists):
            states.make_pending("base", 0)
        with pytest.raises(Exists):
            _store_checkpoint(states, "base")
        _store_checkpoint(states, "old")  # fills the directory its owner made
        assert "old" not in states.pending and "old" in states.names()
        states.make_pending("theirs", 65534)
        with pytest.raises(Exists, match="uid 65534"):
            _store_checkpoint(states, "theirs")
        assert "theirs" in states.pending
        states.delete("kid")
        assert states.expire() == ["base"]
    finally:
        fabric.close()
