"""Level 2 without FUSE: formats against qiskit.quantum_info, stabilizer detection, sealing."""

import os

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

from levels.errors import Corrupt, Invalid
from levels.stateformats import (
    FORMATS,
    FormatOptions,
    choose_format,
    decode,
    encode,
    stabilizer_circuit,
    validate_state,
)
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
