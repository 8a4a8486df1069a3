"""The live state of a task's qubits: a state vector evolved gate by gate, measured and
collapsed one qubit at a time.

Feed-forward must answer within microseconds, so single gates are applied with numpy on
the vector directly (qiskit's Statevector.evolve costs ~100 us of Python per call); whole
circuits go through Qiskit. Qubit k is bit k of the index, as in qiskit.quantum_info.
"""

import functools

import numpy as np

from levels.errors import Invalid

MAX_LIVE_QUBITS = 24


@functools.lru_cache(maxsize=512)
def gate_matrix(name: str, params: tuple[float, ...], num_qubits: int) -> np.ndarray:
    """The unitary of a standard Qiskit gate, as a (2,)*2k tensor in Qiskit's bit order."""
    from qiskit.circuit.library import get_standard_gate_name_mapping

    template = get_standard_gate_name_mapping().get(name)
    if template is None or getattr(template, "_directive", False):
        raise Invalid(f"unknown gate {name!r}")
    if template.num_qubits != num_qubits:
        raise Invalid(f"gate {name} acts on {template.num_qubits} qubits, not {num_qubits}")
    if len(template.params) != len(params):
        raise Invalid(f"gate {name} takes {len(template.params)} angle(s), not {len(params)}")
    gate = template.base_class(*params) if params else template
    try:
        matrix = np.asarray(gate.to_matrix(), dtype=complex)
    except Exception as exc:
        raise Invalid(f"gate {name} has no matrix: {exc}") from exc
    k = num_qubits
    # Qiskit's matrix index is little-endian (qubit 0 = lowest bit); as a tensor, reverse
    # the axes so that axis j of each half is gate qubit j.
    tensor = matrix.reshape((2,) * (2 * k))
    order = list(reversed(range(k))) + [k + a for a in reversed(range(k))]
    return np.ascontiguousarray(tensor.transpose(order))


@functools.lru_cache(maxsize=1024)
def monomial_action(
    name: str, params: tuple[float, ...], qubits: tuple[int, ...], num_qubits: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """For gates with one non-zero per column (x, y, z, s, t, rz, cx, cz, swap, ...): the
    whole gate as new = old[source] * phases, two numpy operations on the feed-forward path.
    None for gates that mix amplitudes (h, rx, ...)."""
    matrix = gate_matrix(name, params, len(qubits))
    k = len(qubits)
    flat = matrix.transpose(list(reversed(range(k))) + [k + a for a in reversed(range(k))])
    flat = flat.reshape(2**k, 2**k)  # back to Qiskit's little-endian matrix
    nonzero = np.abs(flat) > 1e-12
    if not np.all(nonzero.sum(axis=0) == 1):
        return None
    row_of = nonzero.argmax(axis=0)  # local column -> local row
    index = np.arange(2**num_qubits)
    local = np.zeros_like(index)
    for j, q in enumerate(qubits):
        local |= ((index >> q) & 1) << j
    target = index.copy()
    for j, q in enumerate(qubits):
        target &= ~(1 << q)
        target |= ((row_of[local] >> j) & 1) << q
    source = np.empty_like(index)
    source[target] = index
    phases = np.empty(2**num_qubits, dtype=complex)
    phases[target] = flat[row_of[local], local]
    return source, phases


class LiveState:
    def __init__(self, num_qubits: int, rng: np.random.Generator | None = None) -> None:
        if num_qubits > MAX_LIVE_QUBITS:
            raise Invalid(f"live state is kept for at most {MAX_LIVE_QUBITS} qubits")
        self.num_qubits = num_qubits
        self.vector = np.zeros(2**num_qubits, dtype=complex)
        self.vector[0] = 1.0
        self.rng = rng or np.random.default_rng()

    def reset(self) -> None:
        self.vector[:] = 0
        self.vector[0] = 1.0

    def _axis(self, qubit: int) -> int:
        if not 0 <= qubit < self.num_qubits:
            raise Invalid(f"q{qubit} is outside this task's {self.num_qubits} qubits")
        return self.num_qubits - 1 - qubit  # C-order axis 0 is the highest qubit

    def apply_gate(self, name: str, qubits: tuple[int, ...], params: tuple[float, ...] = ()):
        params = tuple(float(p) for p in params)
        for q in qubits:
            self._axis(q)
        shortcut = monomial_action(name, params, tuple(qubits), self.num_qubits)
        if shortcut is not None:
            source, phases = shortcut
            self.vector = self.vector[source] * phases
            return
        tensor = gate_matrix(name, params, len(qubits))
        k = len(qubits)
        if k == 1:
            self._apply_one(tensor, qubits[0])
            return
        axes = [self._axis(q) for q in qubits]
        psi = self.vector.reshape((2,) * self.num_qubits)
        moved = np.tensordot(tensor, psi, axes=(list(range(k, 2 * k)), axes))
        self.vector = np.moveaxis(moved, list(range(k)), axes).reshape(-1)

    def _apply_one(self, u: np.ndarray, qubit: int) -> None:
        """A single-qubit gate in place on the two halves it mixes (no tensordot, no copy
        of the whole vector): the feed-forward hot path."""
        self._axis(qubit)
        pairs = self.vector.reshape(-1, 2, 1 << qubit)
        zero, one = pairs[:, 0, :], pairs[:, 1, :]
        old_zero = zero.copy()
        zero *= u[0, 0]
        zero += u[0, 1] * one
        one *= u[1, 1]
        one += u[1, 0] * old_zero

    def evolve(self, circuit) -> None:
        """Apply a measurement-free circuit (its qubit i is the task's logical qubit i)."""
        from qiskit.quantum_info import Statevector

        if circuit.num_qubits > self.num_qubits:
            raise Invalid(f"circuit has {circuit.num_qubits} qubits, the task "
                          f"{self.num_qubits}")
        for instruction in circuit.data:
            if instruction.operation.name in ("measure", "reset") or \
                    instruction.operation.name.endswith("_op"):
                raise Invalid(f"apply takes unitary circuits; {instruction.operation.name} "
                              "found (use run, or measure qK)")
        padded = circuit
        if circuit.num_qubits < self.num_qubits:
            from qiskit import QuantumCircuit

            padded = QuantumCircuit(self.num_qubits)
            padded.compose(circuit, qubits=range(circuit.num_qubits), inplace=True)
        self.vector = np.asarray(Statevector(self.vector).evolve(padded).data)

    def probability_of_one(self, qubit: int) -> float:
        psi = self.vector.reshape((2,) * self.num_qubits)
        ones = np.take(psi, 1, axis=self._axis(qubit))
        return float(np.vdot(ones, ones).real)

    def measure(self, qubit: int) -> int:
        """Sample one qubit and collapse the state onto the outcome."""
        p1 = min(max(self.probability_of_one(qubit), 0.0), 1.0)
        outcome = int(self.rng.random() < p1)
        psi = self.vector.reshape((2,) * self.num_qubits)
        keep = np.take(psi, outcome, axis=self._axis(qubit))
        collapsed = np.zeros_like(psi)
        index = [slice(None)] * self.num_qubits
        index[self._axis(qubit)] = outcome
        collapsed[tuple(index)] = keep / np.sqrt(p1 if outcome else 1.0 - p1)
        self.vector = collapsed.reshape(-1)
        return outcome
