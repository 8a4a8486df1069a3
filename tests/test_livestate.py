"""The live state's Pauli frame against qiskit.quantum_info: random gate sequences with
measurements in between, the frame folded in only at the end (or midway)."""

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector, random_statevector, state_fidelity

from levels.livestate import LiveState

GATES = [("x", 1, 0), ("y", 1, 0), ("z", 1, 0), ("s", 1, 0), ("tdg", 1, 0), ("rz", 1, 1),
         ("p", 1, 1), ("h", 1, 0), ("u", 1, 3), ("cx", 2, 0), ("cz", 2, 0), ("swap", 2, 0),
         ("cp", 2, 1), ("crx", 2, 1), ("ccx", 3, 0), ("rzz", 2, 1)]


def _project(reference: Statevector, qubit: int, outcome: int) -> tuple[float, Statevector]:
    data = np.asarray(reference.data).copy()
    index = np.arange(len(data))
    data[((index >> qubit) & 1) != outcome] = 0
    weight = float(np.vdot(data, data).real)
    return weight, Statevector(data / np.sqrt(weight))


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_match_qiskit(seed):
    rng = np.random.default_rng(seed)
    n = 5
    start = random_statevector(2**n, seed=seed)
    state = LiveState(n, np.random.default_rng(seed))
    state.vector = np.asarray(start.data).copy()
    reference = start
    for step in range(40):
        if rng.random() < 0.15:
            qubit = int(rng.integers(n))
            p1 = state.probability_of_one(qubit)
            outcome = state.measure(qubit)
            weight, reference = _project(reference, qubit, outcome)
            assert (p1 if outcome else 1 - p1) == pytest.approx(weight, abs=1e-10)
            continue
        name, k, angles = GATES[rng.integers(len(GATES))]
        qubits = tuple(int(q) for q in rng.choice(n, size=k, replace=False))
        params = tuple(float(a) for a in rng.uniform(-3, 3, size=angles))
        state.apply_gate(name, qubits, params)
        circuit = QuantumCircuit(n)
        getattr(circuit, name)(*params, *qubits)
        reference = reference.evolve(circuit)
        if step == 20:  # folding the frame midway changes nothing
            assert state_fidelity(Statevector(state.vector), reference) == pytest.approx(
                1, abs=1e-10)
    amplitudes = state.vector
    assert np.allclose(amplitudes, reference.data, atol=1e-10)  # global phase included


def test_pauli_dispatch_leaves_the_stored_vector_alone():
    """An X, Y or Z correction changes only the frame: the 1 MB vector is not written."""
    state = LiveState(16)
    state.apply_gate("h", (3,))
    stored = state._stored
    before = stored.copy()
    for name in ("x", "y", "z", "x"):
        state.apply_gate(name, (3,))
    assert state._stored is stored and np.array_equal(stored, before)
    expected = Statevector.from_label("0" * 16).evolve(
        _circuit(16, [("h", 3), ("x", 3), ("y", 3), ("z", 3), ("x", 3)]))
    assert np.allclose(state.vector, expected.data, atol=1e-12)


def _circuit(n: int, gates: list[tuple[str, int]]) -> QuantumCircuit:
    circuit = QuantumCircuit(n)
    for name, qubit in gates:
        getattr(circuit, name)(qubit)
    return circuit


def test_a_measurement_defers_zeroing_until_amplitudes_are_read():
    """measure writes nothing into the vector: the projected-out half is zeroed when the
    amplitudes are next read or mixed, so the triggers a measurement fires run first."""
    state = LiveState(16, np.random.default_rng(3))
    state.apply_gate("h", (0,))
    state.apply_gate("h", (5,))
    stored = state._stored
    before = stored.copy()
    outcome = state.measure(0)
    state.apply_gate("x", (5,))  # a correction: the frame alone
    state.apply_gate("z", (0,))
    assert state._stored is stored and np.array_equal(stored, before)
    reference = Statevector.from_label("0" * 16).evolve(_circuit(16, [("h", 0), ("h", 5)]))
    _weight, reference = _project(reference, 0, outcome)
    reference = reference.evolve(_circuit(16, [("x", 5), ("z", 0)]))
    assert np.allclose(state.vector, reference.data, atol=1e-12)
    assert state.probability_of_one(0) == pytest.approx(outcome)
