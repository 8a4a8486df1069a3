"""The live state of a task's qubits: a state vector evolved gate by gate, measured and
collapsed one qubit at a time.

Feed-forward must answer within microseconds, and a 16-qubit vector is 1 MB: a dispatch
must neither copy nor rescan it. The state is kept as c * Z^z X^x |stored>, a Pauli frame
(an X mask, a Z mask and a scalar) over the stored vector, so that Pauli gates (the usual
corrections) only change the frame, other gates with one non-zero per column (s, t, rz,
cz, ...) multiply only the sub-blocks they change, in place, and mixing gates (h, cx, ...)
rewrite only the blocks they mix. A measurement reads one half; zeroing the other half is
put off (a pending projection) until something reads or mixes amplitudes, so the triggers
it fires run at once, without waiting for half a megabyte of writes (and without the
evicted cache those writes leave behind); its renormalisation goes into the scalar.
Reading `vector` folds the frame in once.
Whole circuits go through Qiskit. Qubit k is bit k of the index, as in qiskit.quantum_info.
"""

import functools
import types

import numpy as np

from levels.errors import Invalid

MAX_LIVE_QUBITS = 24


@functools.lru_cache(maxsize=512)
def gate_matrix(name: str, params: tuple[float, ...], num_qubits: int) -> np.ndarray:
    """The unitary of a standard Qiskit gate (Qiskit's little-endian matrix); Invalid when
    the name, the qubit count or the angles do not fit."""
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
    matrix.setflags(write=False)
    return matrix


def _popcount_sign(bits: int) -> int:
    return -1 if bits.bit_count() % 2 else 1


def _local(mask: int, qubits: tuple[int, ...]) -> int:
    """The bits of a global mask on `qubits`, as a gate-local index."""
    return sum(((mask >> q) & 1) << j for j, q in enumerate(qubits))


def _global(local: int, qubits: tuple[int, ...]) -> int:
    return sum(((local >> j) & 1) << q for j, q in enumerate(qubits))


@functools.lru_cache(maxsize=1024)
def _split(name: str, params: tuple[float, ...], k: int) -> tuple[int, np.ndarray] | None:
    """A gate that is X^s times a diagonal, as (s, the diagonal); None for others (h, cx,
    swap, ...). Such a gate never has to move amplitudes: X^s goes into the frame."""
    matrix = gate_matrix(name, params, k)
    rows = np.abs(matrix) > 1e-12
    if not np.all(rows.sum(axis=0) == 1):
        return None
    row_of = rows.argmax(axis=0)
    s = int(row_of[0])
    if any(int(row_of[j]) != j ^ s for j in range(2**k)):
        return None
    return s, matrix[row_of, np.arange(2**k)]


@functools.lru_cache(maxsize=4096)
def _diagonal_plan(
    name: str, params: tuple[float, ...], qubits: tuple[int, ...], x: int,
) -> tuple[int, complex, int | None, tuple[tuple[int, complex], ...]] | None:
    """For a gate X^s D on `qubits` meeting the frame's X mask `x` (gate-local): s (a global
    mask), the phase that goes into the scalar, the Z string D' is (a global mask, or None),
    else the sub-blocks D' multiplies and by what. F^-1 D F = X^x D X^x, so D'[j] =
    D[j ^ x]. Cached: a dispatch is a lookup."""
    k = len(qubits)
    split = _split(name, params, k)
    if split is None:
        return None
    s, diagonal = split
    shifted = diagonal[np.arange(2**k) ^ x]
    phase = complex(shifted[0])
    relative = shifted / phase
    z = sum(1 << j for j in range(k) if abs(relative[1 << j] + 1) < 1e-12)
    if np.allclose(relative, [_popcount_sign(j & z) for j in range(2**k)], rtol=0, atol=1e-12):
        return _global(s, qubits), phase, _global(z, qubits), ()
    return _global(s, qubits), phase, None, tuple((j, complex(relative[j])) for j in range(1, 2**k)
                                 if abs(relative[j] - 1) > 1e-15)


class LiveState:
    def __init__(self, num_qubits: int, rng: np.random.Generator | None = None) -> None:
        if num_qubits > MAX_LIVE_QUBITS:
            raise Invalid(f"live state is kept for at most {MAX_LIVE_QUBITS} qubits")
        self.num_qubits = num_qubits
        self.rng = rng or np.random.default_rng()
        self._stored = np.zeros(2**num_qubits, dtype=complex)
        self.reset()

    def reset(self) -> None:
        self._stored[:] = 0
        self._stored[0] = 1.0
        self._x, self._z, self._scale = 0, 0, 1.0 + 0j
        self._pending: list[tuple[int, int]] = []  # (qubit, stored bit) halves to zero

    def _settle(self) -> None:
        """Zero the halves that measurements projected out (before amplitudes are read or
        mixed; a diagonal factor or a frame change may touch them first: they end at 0)."""
        for qubit, bit in self._pending:
            self._block(qubit, bit)[...] = 0
        self._pending.clear()

    @property
    def vector(self) -> np.ndarray:
        """The state's amplitudes (the frame folded into the stored vector, once)."""
        self._settle()
        if self._x:
            axes = [self.num_qubits - 1 - q for q in range(self.num_qubits) if self._x >> q & 1]
            psi = self._stored.reshape((2,) * self.num_qubits)
            self._stored = np.ascontiguousarray(np.flip(psi, axis=tuple(axes))).reshape(-1)
        for q in range(self.num_qubits):
            if self._z >> q & 1:
                self._block(q, 1)[...] *= -1
        if self._scale != 1:
            self._stored *= self._scale
        self._x, self._z, self._scale = 0, 0, 1.0 + 0j
        return self._stored

    @vector.setter
    def vector(self, amplitudes: np.ndarray) -> None:
        self._stored = np.ascontiguousarray(amplitudes, dtype=complex).reshape(-1)
        self._x, self._z, self._scale = 0, 0, 1.0 + 0j
        self._pending = []

    def _check(self, qubit: int) -> None:
        if not 0 <= qubit < self.num_qubits:
            raise Invalid(f"q{qubit} is outside this task's {self.num_qubits} qubits")

    def _block(self, qubit: int, bit: int) -> np.ndarray:
        """The stored amplitudes whose index has `bit` at `qubit`: a view, no copy."""
        return self._stored.reshape(-1, 2, 1 << qubit)[:, bit, :]

    def _sub_block(self, qubits: tuple[int, ...], local: int) -> np.ndarray:
        """The stored amplitudes whose bits on `qubits` spell the local index: a view, also
        when `qubits` are all of the task's (a 0-d view: the trailing Ellipsis keeps numpy
        from returning a scalar, a copy that in-place updates would miss)."""
        index: list[slice | int | types.EllipsisType] = [slice(None)] * self.num_qubits
        for j, q in enumerate(qubits):
            index[self.num_qubits - 1 - q] = (local >> j) & 1
        index.append(Ellipsis)
        return self._stored.reshape((2,) * self.num_qubits)[tuple(index)]

    def apply_gate(self, name: str, qubits: tuple[int, ...], params: tuple[float, ...] = ()):
        if (name == "x" or name == "z") and len(qubits) == 1 and not params:
            self._pauli(name, qubits[0])  # the usual correction: the frame alone
            return
        params = tuple(map(float, params))
        qubits = tuple(qubits)
        x = 0  # the frame's X mask on the gate's qubits (gate-local), checking them on the way
        for j, q in enumerate(qubits):
            self._check(q)
            x |= (self._x >> q & 1) << j
        if len(set(qubits)) != len(qubits):
            raise Invalid(f"gate {name} names a qubit twice")
        k = len(qubits)
        plan = _diagonal_plan(name, params, qubits, x)
        if plan is None:
            self._mix(self._conjugated(gate_matrix(name, params, k), qubits), qubits)
            return
        s, phase, z, factors = plan
        # U F = X^s D F = X^s F D': D' acts on the stored vector, X^s joins the frame.
        self._scale *= phase
        if z is not None:  # D' = Z^z': Z^z X^x Z^z' = (-1)^|x&z'| Z^(z^z') X^x
            self._scale *= _popcount_sign(self._x & z)
            self._z ^= z
        for j, factor in factors:
            self._sub_block(qubits, j)[...] *= factor
        if s:  # X^s Z^z = (-1)^|s&z| Z^z X^s
            self._scale *= _popcount_sign(s & self._z)
            self._x ^= s

    def _pauli(self, name: str, qubit: int) -> None:
        """X or Z on one qubit, in the frame: Z Z^z X^x = Z^(z^q) X^x, and
        X Z^z X^x = (-1)^z_q Z^z X^(x^q) (what the general path computes, without its
        lookups)."""
        self._check(qubit)
        bit = 1 << qubit
        if name == "z":
            self._z ^= bit
            return
        if self._z & bit:
            self._scale = -self._scale
        self._x ^= bit

    def _conjugated(self, matrix: np.ndarray, qubits: tuple[int, ...]) -> np.ndarray:
        """F^-1 U F on the gate's qubits, for F = Z^z X^x the frame there (the scalar
        commutes): the matrix to apply to the stored vector."""
        x, z = _local(self._x, qubits), _local(self._z, qubits)
        if not x and not z:
            return matrix
        index = np.arange(len(matrix))
        signs = np.array([_popcount_sign(int(j) & z) for j in index])
        frame = np.zeros_like(matrix)
        frame[index, index ^ x] = signs  # Z^z X^x: column j -> row j ^ x, sign of the row
        return frame.conj().T @ matrix @ frame

    def _mix(self, matrix: np.ndarray, qubits: tuple[int, ...]) -> None:
        """new block r = sum_j U[r, j] old block j, in place over strided views; a block is
        copied only when a row written before it still needs its old value."""
        self._settle()
        changed = [r for r in range(len(matrix))
                   if not (abs(matrix[r, r] - 1) < 1e-15
                           and np.count_nonzero(np.abs(matrix[r]) > 1e-15) == 1)]
        saved = {}
        for position, j in enumerate(changed):
            if any(abs(matrix[r, j]) > 1e-15 for r in changed[position + 1:]):
                saved[j] = self._sub_block(qubits, j).copy()
        for r in changed:
            block = self._sub_block(qubits, r)  # still its old value: written only now
            if abs(matrix[r, r]) > 1e-15:
                block *= matrix[r, r]
            else:
                block[...] = 0
            for j in range(len(matrix)):
                if j != r and abs(matrix[r, j]) > 1e-15:
                    block += matrix[r, j] * saved.get(j, self._sub_block(qubits, j))

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

    def _weight(self, qubit: int, bit: int) -> float:
        """Sum of |amplitude|^2 over a stored half, without BLAS (whose threads contend on
        a loaded machine) and without a copy."""
        floats = self._block(qubit, bit).view(np.float64)  # (re, im) pairs, one pass
        return float(np.einsum("ij,ij->", floats, floats))

    def probability_of_one(self, qubit: int) -> float:
        self._check(qubit)
        self._settle()
        return abs(self._scale) ** 2 * self._weight(qubit, 1 ^ (self._x >> qubit & 1))

    def measure(self, qubit: int) -> int:
        """Sample one qubit and collapse the state onto the outcome: the other stored half
        is to be zeroed (pending, see _settle), the renormalisation goes into the frame's
        scalar."""
        p1 = min(max(self.probability_of_one(qubit), 0.0), 1.0)
        outcome = int(self.rng.random() < p1)
        flipped = self._x >> qubit & 1
        self._pending.append((qubit, 1 ^ outcome ^ flipped))
        self._scale /= np.sqrt(p1 if outcome else 1.0 - p1)
        return outcome
