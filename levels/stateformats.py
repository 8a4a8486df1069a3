"""The seven serialization formats of a quantum state, and the automatic choice between them.

Each encoder returns a payload (an uncompressed .npz: arrays plus a JSON header) that
decodes back to a state vector or a density matrix. Exact formats (state vector, density
matrix, stabilizer, sparse at threshold 0) reproduce the state; MPS, low rank, sparse with a
threshold and the classical shadow approximate it, and the checkpoint records the fidelity
of what decodes against the exact state, measured with qiskit.quantum_info.

Conventions: qubit k is bit k of a basis index, as in Qiskit.
"""

import dataclasses
import io
import json
import math
from typing import Any

import numpy as np

from levels.errors import Invalid

FORMATS = ("statevector", "density_matrix", "mps", "stabilizer", "shadow", "sparse",
           "low_rank")
# What each format decodes to, and the name of its .npy view in /states/<ckpt>/.
DECODES_TO = {"statevector": "statevector", "mps": "statevector", "stabilizer": "statevector",
              "sparse": "statevector", "density_matrix": "density_matrix",
              "low_rank": "density_matrix", "shadow": "density_matrix"}
MAX_DENSITY_QUBITS = 12
MAX_SHADOW_QUBITS = 8
STABILIZER_SUPPORT_MAX = 20  # the stabilizer test holds 2^k x k bits for a support of 2^k
NONZERO = 1e-12  # a normalised amplitude at most this is zero to the sparse choice
SCHMIDT_ZERO = 1e-12  # squared Schmidt coefficients below this are the arithmetic's
GUESS_ROWS = 1024  # rows across the entropy's cut looks_dense reads (1 MiB at a cut of 6)


@dataclasses.dataclass(frozen=True)
class FormatOptions:
    mps_max_bond: int = 64
    mps_cutoff: float = 1e-12
    sparse_threshold: float = 0.0
    low_rank_k: int = 4
    shadow_snapshots: int = 2000
    complex64: bool = False  # store amplitudes in single precision (a measured fidelity)
    seed: int | None = None


@dataclasses.dataclass
class Encoded:
    format: str
    payload: bytes
    decoded: np.ndarray  # what decoding the payload gives (vector or matrix)
    fidelity: float


def num_qubits_of(state: np.ndarray) -> int:
    return qubits_of_shape(state.shape)


def qubits_of_shape(shape: tuple[int, ...]) -> int:
    """The qubit count of a state of this shape (known from a .npy header, before the data)."""
    if len(shape) not in (1, 2):
        raise Invalid(f"a state is a vector or a square matrix, not {len(shape)}-D")
    size = shape[0]
    n = size.bit_length() - 1
    if size < 1 or 2**n != size:
        raise Invalid(f"a state needs a power-of-two dimension, not {size}")
    if n < 1:  # a 1-amplitude "state" has no qubit to hold, measure or restore onto
        raise Invalid(f"a state needs at least one qubit: a dimension of 2 or more, not {size}")
    if len(shape) == 2 and shape != (size, size):
        raise Invalid(f"a density matrix must be square, not {shape}")
    return n


def validate_state(state: np.ndarray, tolerance: float = 1e-6) -> tuple[np.ndarray, float]:
    """A normalised vector or a unit-trace Hermitian PSD matrix as complex128, or Invalid;
    with the trace distance from the input of what was projected away (see _nearest_psd)."""
    array = np.asarray(state)
    if not np.issubdtype(array.dtype, np.number):
        raise Invalid(f"a state holds numbers, not {array.dtype}")
    array = np.asarray(array, dtype=np.complex128)  # read only here: no copy when it is one
    num_qubits_of(array)
    if not np.all(np.isfinite(array)):
        raise Invalid("the state holds NaN or infinite values")
    if array.ndim == 1:
        norm = float(np.vdot(array, array).real)
        if abs(norm - 1) > tolerance:
            raise Invalid(f"the state vector is not normalised (norm² = {norm:.9g})")
        return array / math.sqrt(norm), 0.0  # the same ray: no other state
    if not np.allclose(array, array.conj().T, atol=tolerance):
        raise Invalid("the density matrix is not Hermitian")
    trace = float(np.trace(array).real)
    if abs(trace - 1) > tolerance:
        raise Invalid(f"the density matrix does not have unit trace ({trace:.9g})")
    hermitian = (array + array.conj().T) / (2 * trace)
    lowest = float(np.linalg.eigvalsh(hermitian).min())
    if lowest < -tolerance:
        raise Invalid(f"the density matrix is not positive semidefinite (eigenvalue "
                      f"{lowest:.3g})")
    if lowest < -ROUNDING:
        return _nearest_psd(hermitian)
    return hermitian, 0.0


ROUNDING = 1e-12  # eigenvalues this close to zero are the arithmetic's, not the input's


def _nearest_psd(hermitian: np.ndarray) -> tuple[np.ndarray, float]:
    """The closest density matrix (in 2-norm, keeping the eigenvectors and the trace) to a
    Hermitian unit-trace matrix with small negative eigenvalues, and the trace distance
    between them: served as given, such a matrix would not be a state."""
    values, vectors = np.linalg.eigh(hermitian)
    fixed = _closest_spectrum(values[::-1])[::-1]
    return (vectors * fixed) @ vectors.conj().T, float(np.abs(values - fixed).sum() / 2)


def fidelity(a: np.ndarray, b: np.ndarray) -> float:
    from qiskit.quantum_info import DensityMatrix, Statevector, state_fidelity

    def wrap(x):
        return Statevector(x) if x.ndim == 1 else DensityMatrix(x)

    return min(1.0, float(state_fidelity(wrap(a), wrap(b), validate=False)))


ENTROPY_CUT_MAX = 6  # qubits on the small side of the cut: a 64x64 eigenproblem at most
MIXED_ENTROPY = ("a mixed state: the entropy of its qubits would count classical mixing as "
                 "entanglement, so none is given")


def schmidt_spectrum(vector: np.ndarray) -> tuple[int, np.ndarray]:
    """(k, squared Schmidt coefficients) across the cut between the lowest k = min(n/2, 6)
    qubits and the rest: the eigenvalues of the small side's 2^k x 2^k reduced density
    matrix M^H M (a dense SVD across the middle cut cost ~80% of a 20-qubit checkpoint)."""
    n = num_qubits_of(vector)
    cut = min(n // 2, ENTROPY_CUT_MAX)
    matrix = vector.reshape(2 ** (n - cut), 2**cut)
    return cut, np.clip(np.linalg.eigvalsh(matrix.conj().T @ matrix), 0, None)


def entanglement(spectrum: tuple[int, np.ndarray] | None) -> dict[str, Any]:
    """meta.json's entanglement fields: the von Neumann entropy (bits) of qubits 0..k-1 of
    a pure state, the cut named; null with the reason for a mixed state."""
    if spectrum is None:
        return {"entanglement_entropy": None, "entanglement_entropy_cut": None,
                "entanglement_entropy_reason": MIXED_ENTROPY}
    cut, values = spectrum
    p = values[values > 1e-14]
    return {"entanglement_entropy": max(0.0, float(-(p * np.log2(p)).sum())),
            "entanglement_entropy_cut": list(range(cut)),
            "entanglement_entropy_reason": None}


# -- containers ----------------------------------------------------------------------------


def _pack(header: dict[str, Any], **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # the stub lets **kwds reach allow_pickle
    return buffer.getvalue()


def _unpack(payload: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        header = json.loads(arrays.pop("header").tobytes())
    except Exception as exc:
        raise Invalid(f"not a qfs state payload: {exc}") from exc
    return header, arrays


def _shuffled(amplitudes: np.ndarray) -> np.ndarray:
    """Byte k of every float together (as Blosc does): zstd compresses it 3x faster."""
    raw = amplitudes.view(np.uint8).reshape(-1, amplitudes.dtype.itemsize // 2)
    return np.ascontiguousarray(raw.T)


def _unshuffled(shuffled: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(shuffled.T).reshape(-1).view(dtype)


# -- encoders ------------------------------------------------------------------------------


def encode(state: np.ndarray, fmt: str, options: FormatOptions) -> Encoded:
    if fmt not in FORMATS:
        raise Invalid(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    encoder = _ENCODERS[fmt]
    payload = encoder(state, options)
    decoded = decode(payload)
    return Encoded(fmt, payload, decoded, fidelity(state, decoded))


def decode(payload: bytes) -> np.ndarray:
    header, arrays = _unpack(payload)
    decoder = _DECODERS.get(header.get("format", ""))
    if decoder is None:
        raise Invalid(f"unknown payload format {header.get('format')!r}")
    return decoder(header, arrays)


def _pure(state: np.ndarray, fmt: str) -> np.ndarray:
    if state.ndim != 1:
        raise Invalid(f"format {fmt} stores pure states; this is a density matrix "
                      "(use density_matrix, low_rank or shadow)")
    return state


def _encode_statevector(state, options):
    return statevector_payload(_pure(state, "statevector"),
                               "complex64" if options.complex64 else "complex128")


def statevector_payload(vector: np.ndarray, precision: str) -> bytes:
    """The single-blob statevector payload (also what a chunked checkpoint gives as the
    compression dictionary of an incremental child)."""
    dtype = np.dtype(precision)
    return _pack({"format": "statevector", "dtype": dtype.str},
                 amplitudes=_shuffled(vector.astype(dtype)))


def _decode_statevector(header, arrays):
    vector = _unshuffled(arrays["amplitudes"], np.dtype(header["dtype"])).astype(np.complex128)
    return vector / np.linalg.norm(vector)


def _as_density(state: np.ndarray) -> np.ndarray:
    if state.ndim == 1:
        if num_qubits_of(state) > MAX_DENSITY_QUBITS:
            raise Invalid(f"a density matrix is kept for at most {MAX_DENSITY_QUBITS} qubits")
        return np.outer(state, state.conj())
    return state


def _encode_density(state, options):
    return _pack({"format": "density_matrix"}, matrix=_as_density(state))


def _decode_density(header, arrays):
    return arrays["matrix"].astype(np.complex128)


def _encode_sparse(state, options):
    vector = _pure(state, "sparse")
    weights = np.abs(vector) ** 2
    keep = np.flatnonzero(weights > options.sparse_threshold if options.sparse_threshold > 0
                          else vector != 0)
    return _pack({"format": "sparse", "size": int(vector.size)},
                 indices=keep.astype(np.uint64), amplitudes=vector[keep])


def _decode_sparse(header, arrays):
    vector = np.zeros(header["size"], dtype=np.complex128)
    vector[arrays["indices"].astype(np.int64)] = arrays["amplitudes"]
    norm = np.linalg.norm(vector)
    if norm == 0:
        raise Invalid("the sparse threshold dropped every amplitude")
    return vector / norm


def _encode_low_rank(state, options):
    matrix = _as_density(state)
    values, vectors = np.linalg.eigh(matrix)
    rank = max(1, int((values > 1e-12).sum()))  # a pure state keeps one vector, not k
    order = np.argsort(values)[::-1][: max(1, min(options.low_rank_k, rank))]
    values = np.clip(values[order], 0, None)
    return _pack({"format": "low_rank"}, eigenvalues=values, eigenvectors=vectors[:, order])


def _decode_low_rank(header, arrays):
    values, vectors = arrays["eigenvalues"], arrays["eigenvectors"]
    matrix = (vectors * values) @ vectors.conj().T
    return matrix / np.trace(matrix).real


def mps_tensors(vector: np.ndarray, max_bond: int, cutoff: float) -> list[np.ndarray]:
    """Left-canonical MPS by successive SVDs, highest qubit first (C-order axes)."""
    n = num_qubits_of(vector)
    tensors = []
    rest = vector.reshape(1, -1)
    bond = 1
    for _site in range(n - 1):
        rest = rest.reshape(bond * 2, -1)
        u, s, vh = np.linalg.svd(rest, full_matrices=False)
        keep = max(1, min(max_bond, int((s > cutoff).sum())))
        tensors.append(u[:, :keep].reshape(bond, 2, keep))
        rest = s[:keep, None] * vh[:keep]
        bond = keep
    tensors.append(rest.reshape(bond, 2, 1))
    return tensors


def mps_vector(tensors: list[np.ndarray]) -> np.ndarray:
    result = tensors[0].reshape(2, -1)
    for tensor in tensors[1:]:
        bond = tensor.shape[0]
        result = (result.reshape(-1, bond) @ tensor.reshape(bond, -1))
    vector = result.reshape(-1)
    return vector / np.linalg.norm(vector)


def _encode_mps(state, options):
    tensors = mps_tensors(_pure(state, "mps"), options.mps_max_bond, options.mps_cutoff)
    return _pack({"format": "mps", "sites": len(tensors),
                  "max_bond": max(t.shape[2] for t in tensors)},
                 **{f"t{i}": t for i, t in enumerate(tensors)})


def _decode_mps(header, arrays):
    return mps_vector([arrays[f"t{i}"] for i in range(header["sites"])])


def _encode_stabilizer(state, options):
    form = stabilizer_circuit(_pure(state, "stabilizer"))
    if form is None:
        raise Invalid("not a stabilizer (Clifford) state: use another format")
    circuit, phase = form
    from qiskit.quantum_info import StabilizerState

    labels = StabilizerState(circuit).clifford.to_labels(mode="S")
    return _pack({"format": "stabilizer", "stabilizers": labels, "phase": phase,
                  "anchor": int(np.flatnonzero(np.abs(state) > 1e-9)[0])})


def _decode_stabilizer(header, arrays):
    from qiskit.quantum_info import Statevector
    from qiskit.synthesis import synth_circuit_from_stabilizers

    vector = np.asarray(Statevector(synth_circuit_from_stabilizers(header["stabilizers"])).data)
    anchor = header["anchor"]
    rotate = np.exp(1j * header["phase"]) * abs(vector[anchor]) / vector[anchor]
    return vector * rotate


def _encode_shadow(state, options):
    """Random-Pauli snapshots: per snapshot a basis per qubit and one sampled outcome."""
    n = num_qubits_of(state)
    if n > MAX_SHADOW_QUBITS:
        raise Invalid(f"classical shadows are reconstructed for at most {MAX_SHADOW_QUBITS} "
                      "qubits here")
    rng = np.random.default_rng(options.seed)
    if state.ndim == 1:
        weights, components = np.ones(1), state[None, :]
    else:  # a mixture of its eigenvectors
        values, vectors = np.linalg.eigh(state)
        keep = values > 1e-12
        weights, components = values[keep], vectors[:, keep].T
    bases = rng.integers(0, 3, size=(options.shadow_snapshots, n), dtype=np.uint8)
    outcomes = np.zeros_like(bases)
    unique, inverse = np.unique(bases, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for u, basis in enumerate(unique):
        rows = np.flatnonzero(inverse == u)
        probabilities = np.zeros(2**n)
        for weight, vector in zip(weights, components, strict=True):
            rotated = vector.reshape((2,) * n)
            for q, b in enumerate(basis):
                axis = n - 1 - q
                rotated = np.moveaxis(np.tensordot(_ROTATIONS[b], rotated, axes=([1], [axis])),
                                      0, axis)
            probabilities += weight * np.abs(rotated.reshape(-1)) ** 2
        samples = rng.choice(2**n, size=rows.size, p=probabilities / probabilities.sum())
        outcomes[rows] = (samples[:, None] >> np.arange(n)) & 1
    return _pack({"format": "shadow", "qubits": n}, bases=bases, outcomes=outcomes)


def _decode_shadow(header, arrays):
    """Huang-Kueng-Preskill estimate, the mean over snapshots of ⊗ (3 U†|b><b|U - I),
    projected onto the closest density matrix (Smolin, Gambetta and Smith 2012)."""
    factor = arrays["bases"].astype(int) * 2 + arrays["outcomes"]  # 0..5 per qubit
    keys, counts = np.unique(factor, axis=0, return_counts=True)
    estimate = _shadow_sum(keys[:, ::-1], counts.astype(float)) / counts.sum()
    values, vectors = np.linalg.eigh((estimate + estimate.conj().T) / 2)
    values = _closest_spectrum(values[::-1])[::-1]
    return (vectors * values) @ vectors.conj().T


def _closest_spectrum(descending: np.ndarray) -> np.ndarray:
    """Zero the most negative eigenvalues, spreading their weight over the rest, keeping
    the trace: the closest physical spectrum in 2-norm."""
    values = descending.astype(float).copy()
    values /= values.sum()
    carried, last = 0.0, len(values) - 1
    while last > 0 and values[last] + carried / (last + 1) < 0:
        carried += values[last]
        values[last] = 0.0
        last -= 1
    values[: last + 1] += carried / (last + 1)
    return values


def _shadow_sum(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Σ counts · ⊗ factors, grouping by the leading factor so each Kronecker product is
    taken once per distinct prefix (keys: highest qubit first)."""
    if keys.shape[1] == 0:
        return np.array([[counts.sum()]], dtype=np.complex128)
    total = np.zeros((2 ** keys.shape[1],) * 2, dtype=np.complex128)
    for f in np.unique(keys[:, 0]):
        rows = keys[:, 0] == f
        total += np.kron(_SNAPSHOT_FACTORS[f], _shadow_sum(keys[rows, 1:], counts[rows]))
    return total


_H = np.array([[1, 1], [1, -1]], dtype=np.complex128) / math.sqrt(2)
_SDG = np.diag([1, -1j])
_ROTATIONS = [_H, _H @ _SDG, np.eye(2, dtype=np.complex128)]  # measure X, Y, Z
_SNAPSHOT_FACTORS = [3 * u.conj().T @ np.outer(e, e) @ u - np.eye(2)
                     for u in _ROTATIONS for e in np.eye(2)]  # index: basis * 2 + outcome


def pure_state_of(decoded: np.ndarray) -> np.ndarray:
    """What a restore loads onto qubits: the vector, or the top eigenvector of a matrix."""
    if decoded.ndim == 1:
        return decoded
    values, vectors = np.linalg.eigh((decoded + decoded.conj().T) / 2)
    return vectors[:, int(np.argmax(values))]


# -- stabilizer states ---------------------------------------------------------------------


def stabilizer_circuit(vector: np.ndarray, tolerance: float = 1e-9):
    """A Clifford circuit preparing `vector` (up to its global phase) and that phase, or None.

    Stabilizer states are exactly the uniform superpositions over an affine subspace
    s0 + span(B) with phases i^(l.x) (-1)^q(x), l linear and q quadratic (Dehaene and
    De Moor). The check finds s0, B, l and q and verifies every amplitude, O(2^k k^2).
    """
    n = num_qubits_of(vector)
    support = np.flatnonzero(np.abs(vector) > tolerance)
    k = round(math.log2(support.size))
    if 2**k != support.size or not np.allclose(np.abs(vector[support]), 2 ** (-k / 2),
                                               atol=1e-7):
        return None
    s0 = int(support[0])
    basis = _reduced_basis([int(s) ^ s0 for s in support])
    if len(basis) != k:
        return None
    pivots = [b.bit_length() - 1 for b in basis]
    x = (np.arange(2**k)[:, None] >> np.arange(k)) & 1  # every x in GF(2)^k
    index = np.full(2**k, s0)
    for j, b in enumerate(basis):
        index ^= np.where(x[:, j] == 1, b, 0)
    relative = vector[index] / vector[s0]
    quarter = np.angle(relative) / (math.pi / 2)
    g = np.round(quarter).astype(int) % 4
    if not np.allclose(relative, 1j ** g, atol=1e-7):
        return None
    # Row r of x holds the bits of r, so g[r] is the phase exponent at x = r.
    unit = [1 << j for j in range(k)]
    linear = [int(g[unit[j]]) % 2 for j in range(k)]
    diagonal = [((int(g[unit[j]]) - linear[j]) % 4) // 2 for j in range(k)]
    pair = np.zeros((k, k), dtype=int)
    for a in range(k):
        for b in range(a + 1, k):
            delta = int(g[unit[a] | unit[b]]) - linear[a] - linear[b]
            if delta % 2:
                return None
            pair[a, b] = (delta // 2 - diagonal[a] - diagonal[b]) % 2
    quadratic = x @ np.array(diagonal) + np.einsum("ij,jk,ik->i", x, pair, x)
    if not np.array_equal((x @ np.array(linear) + 2 * quadratic) % 4, g):
        return None
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(n)
    for j, p in enumerate(pivots):
        circuit.h(p)
        if linear[j]:
            circuit.s(p)
        if diagonal[j]:
            circuit.z(p)
    for a in range(k):
        for b in range(a + 1, k):
            if pair[a, b]:
                circuit.cz(pivots[a], pivots[b])
    for j, b in enumerate(basis):
        for m in range(n):
            if m != pivots[j] and (b >> m) & 1:
                circuit.cx(pivots[j], m)
    for m in range(n):
        if (s0 >> m) & 1:
            circuit.x(m)
    return circuit, float(np.angle(vector[s0]))


def _reduced_basis(vectors: list[int]) -> list[int]:
    """A GF(2) basis of the vectors' span in reduced echelon form (distinct leading bits,
    each leading bit cleared from every other basis vector)."""
    basis: list[int] = []
    for v in vectors:
        for b in basis:
            v = min(v, v ^ b)
        if v:
            basis = [min(b, b ^ v) for b in basis]
            basis.append(v)
    for i, b in enumerate(basis):
        top = 1 << (b.bit_length() - 1)
        for j in range(len(basis)):
            if j != i and basis[j] & top:
                basis[j] ^= b
    return basis


# -- automatic choice ----------------------------------------------------------------------


def choose_format(state: np.ndarray, options: FormatOptions,
                  spectrum: tuple[int, np.ndarray] | None = None) -> tuple[str, str]:
    """(format, why) from the state: Clifford -> stabilizer, few non-zeros -> sparse, low
    entanglement -> MPS, mixed -> low rank or density matrix, else state vector.

    At any size, on cheap evidence first (dense_reason): the Schmidt spectrum across the
    entropy's cut (computed for meta.json anyway; `spectrum` passes it in) and the count
    of non-zeros send a dense entangled state to the state vector without an SVD or a
    stabilizer test."""
    n = num_qubits_of(state)
    if state.ndim == 2:
        rank = int((np.linalg.eigvalsh(state) > 1e-10).sum())
        if rank <= options.low_rank_k:
            return "low_rank", f"mixed state of rank {rank} <= {options.low_rank_k}"
        return "density_matrix", f"mixed state of rank {rank}"
    cut, values = spectrum if spectrum is not None else schmidt_spectrum(state)
    nonzero = int(np.count_nonzero(np.abs(state) > NONZERO))
    reason = dense_reason(n, (cut, values), nonzero, options)
    if reason is not None:
        return "statevector", reason
    schmidt = values[values > SCHMIDT_ZERO]
    rank = schmidt.size
    # Every stabilizer state's spectrum is flat, over a power-of-two rank.
    flat = (rank & (rank - 1)) == 0 and np.allclose(schmidt, 1 / rank, atol=1e-9)
    if flat and nonzero <= 2**STABILIZER_SUPPORT_MAX and stabilizer_circuit(state) is not None:
        return "stabilizer", "a stabilizer (Clifford) state"
    if nonzero * 8 <= state.size:
        return "sparse", f"{nonzero} of {state.size} amplitudes are non-zero"
    if _may_be_mps(n, cut, rank, options):
        bound = _mps_bound(n, options)
        bond = mps_bond(state, bound, options.mps_cutoff)
        if bond is not None:
            return "mps", f"low entanglement: bond dimension {bond} is exact"
        return "statevector", (f"dense; Schmidt rank {rank} across qubits 0..{cut - 1}, but "
                               f"an exact MPS needs a bond over {bound}")
    return "statevector", _entangled(rank, cut)


def dense_reason(qubits: int, spectrum: tuple[int, np.ndarray], nonzero: int,
                 options: FormatOptions, error: float = 0.0) -> str | None:
    """Why a pure state is stored as a state vector, when the evidence alone rules out
    every other format; None when a probe must look at the state itself.

    Settled: more than 2^STABILIZER_SUPPORT_MAX amplitudes over NONZERO (no stabilizer
    test), more than an eighth of them (not sparse), and a Schmidt rank across the cut
    that no exact MPS within the bond limit has. The evidence may be bounds (an import's,
    gathered chunk by chunk as it is written): `nonzero` no more than the true count and
    each of `spectrum`'s values within `error` of the true one. A state is then settled
    only where the bounds settle it, so the choice is the one choose_format makes."""
    cut, values = spectrum
    if nonzero <= 2**STABILIZER_SUPPORT_MAX or nonzero * 8 <= 2**qubits:
        return None
    if _may_be_mps(qubits, cut, int((values > SCHMIDT_ZERO + error).sum()), options):
        return None
    return _entangled(int((values > SCHMIDT_ZERO).sum()), cut)


def looks_dense(vector: np.ndarray, options: FormatOptions) -> bool:
    """A guess, from GUESS_ROWS rows across the entropy's cut spread over the state, that
    dense_reason will settle a large state vector: more than an eighth of their
    amplitudes over NONZERO, and a Schmidt rank no exact MPS within the bond limit has
    (rows taken from a state give squared Schmidt values at most the whole state's).
    Spread, not the head: a register whose high qubits idle in |0> has its support
    there. Cheap, and only a guess: StateStore then seals the state as a state vector
    first and its chunks' evidence decides, which spares a dense state the whole-state
    probes (its spectrum computed twice, a normalised copy: half of a 24-qubit checkpoint
    under `auto`). NaN or infinity guesses no (the whole path refuses them)."""
    n = num_qubits_of(vector)
    cut = min(n // 2, ENTROPY_CUT_MAX)
    width, rows = 2**cut, min(GUESS_ROWS, vector.size >> cut)
    step = (vector.size >> cut) // rows
    picked = (np.arange(rows)[:, None] * (step * width) + np.arange(width)).ravel()
    sample = vector[picked]
    if not np.isfinite(sample).all() or \
            np.count_nonzero(np.abs(sample) > NONZERO) * 8 <= sample.size:
        return False
    matrix = sample.reshape(rows, width)
    values = np.linalg.eigvalsh(matrix.conj().T @ matrix)
    return not _may_be_mps(n, cut, int((values > SCHMIDT_ZERO).sum()), options)


def _mps_bound(qubits: int, options: FormatOptions) -> int:
    return min(options.mps_max_bond, 2 ** (qubits // 4))


def _may_be_mps(qubits: int, cut: int, rank: int, options: FormatOptions) -> bool:
    """Whether the MPS probe runs: an exact MPS within the bond limit has a Schmidt rank
    within it across every cut (a full rank, 2^cut, is taken for an entangled state
    without the probe's SVDs)."""
    return qubits >= 4 and rank <= _mps_bound(qubits, options) and rank < 2**cut


def _entangled(rank: int, cut: int) -> str:
    if not cut:
        return "one qubit"
    return f"dense and entangled: Schmidt rank {rank} across qubits 0..{cut - 1}"


def mps_bond(vector: np.ndarray, bound: int, cutoff: float) -> int | None:
    """The largest bond of the exact MPS (successive SVDs, as mps_tensors), or None as soon
    as one exceeds `bound`: a state that is entangled somewhere stops the probe there."""
    n = num_qubits_of(vector)
    rest, bond, largest = vector.reshape(1, -1), 1, 1
    for _site in range(n - 1):
        _u, s, vh = np.linalg.svd(rest.reshape(bond * 2, -1), full_matrices=False)
        bond = max(1, int((s > cutoff).sum()))
        if bond > bound:
            return None
        largest = max(largest, bond)
        rest = s[:bond, None] * vh[:bond]
    return largest


_ENCODERS = {"statevector": _encode_statevector, "density_matrix": _encode_density,
             "mps": _encode_mps, "stabilizer": _encode_stabilizer, "shadow": _encode_shadow,
             "sparse": _encode_sparse, "low_rank": _encode_low_rank}
_DECODERS = {"statevector": _decode_statevector, "density_matrix": _decode_density,
             "mps": _decode_mps, "stabilizer": _decode_stabilizer, "shadow": _decode_shadow,
             "sparse": _decode_sparse, "low_rank": _decode_low_rank}
