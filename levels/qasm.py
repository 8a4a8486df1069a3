"""OpenQASM parsing and the format views of a circuit, with Qiskit's own loaders.

The parser is chosen from the program's version line (PERF-NOTES: the reference OpenQASM 3
importer can take seconds to refuse an OpenQASM 2 file). OpenQASM 2 is read the way
`QuantumCircuit.from_qasm_str` reads it (legacy gates such as sx, swap, cswap accepted), so
files that Qiskit itself exports are accepted. For OpenQASM 3 the fast Rust importer is tried
first, isolated (it can raise a pyo3 PanicException, which is not an Exception), with the
reference importer as the fallback that decides.
"""

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from levels.errors import Invalid, Unexpressible

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

_VERSION_LINE = re.compile(rb"OPENQASM\s+([0-9]+)(?:\.([0-9]+))?\s*;")
_LEADING_COMMENTS = re.compile(rb"\A(?:\s+|//[^\n]*\n|/\*.*?\*/)*", re.DOTALL)

# Format views made on read, by file extension.
VIEW_FORMATS = ("qpy", "qasm2", "qasm3", "txt")


def qasm_major_version(source: bytes) -> int:
    """3 or 2, from the version line at the top; OpenQASM 3 allows leaving it out."""
    head = _LEADING_COMMENTS.match(source)
    start = head.end() if head else 0
    match = _VERSION_LINE.match(source, start)
    if match is None:
        return 3
    return int(match.group(1))


def _load_qasm3(text: str) -> "QuantumCircuit":
    from qiskit import qasm3

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return qasm3.loads_experimental(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # pyo3 PanicException derives from BaseException only
        pass
    try:
        return qasm3.loads(text)
    except Exception as exc:
        raise Invalid(f"OpenQASM 3 rejected by Qiskit: {_first_line(exc)}") from exc


def _load_qasm2(text: str) -> "QuantumCircuit":
    from qiskit import qasm2

    try:
        return qasm2.loads(
            text,
            custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS,
            include_path=qasm2.LEGACY_INCLUDE_PATH,
        )
    except Exception as exc:
        raise Invalid(f"OpenQASM 2 rejected by Qiskit: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:400]


def parse_program(source: bytes) -> "QuantumCircuit":
    """Parse OpenQASM 2 or 3 bytes into a QuantumCircuit, or raise Invalid with the reason."""
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(f"not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise Invalid("empty program")
    if qasm_major_version(source) == 2:
        return _load_qasm2(text)
    return _load_qasm3(text)


@dataclass(frozen=True)
class CircuitStats:
    """What stats.json and the search index say about one version."""

    num_qubits: int
    num_clbits: int
    depth: int
    size: int
    gate_counts: dict[str, int]
    sha256: str
    qasm_version: int

    def as_dict(self) -> dict:
        return {
            "num_qubits": self.num_qubits,
            "num_clbits": self.num_clbits,
            "depth": self.depth,
            "size": self.size,
            "gate_counts": self.gate_counts,
            "sha256": self.sha256,
            "qasm_version": self.qasm_version,
        }


def circuit_stats(source: bytes, circuit: "QuantumCircuit") -> CircuitStats:
    return CircuitStats(
        num_qubits=circuit.num_qubits,
        num_clbits=circuit.num_clbits,
        depth=circuit.depth(),
        size=circuit.size(),
        gate_counts={str(k): int(v) for k, v in circuit.count_ops().items()},
        sha256=hashlib.sha256(source).hexdigest(),
        qasm_version=qasm_major_version(source),
    )


def render_view(circuit: "QuantumCircuit", fmt: str) -> bytes:
    """The bytes of one format view; Unexpressible when the format cannot hold the circuit."""
    if fmt == "qpy":
        from qiskit import qpy

        buffer = io.BytesIO()
        qpy.dump(circuit, buffer)
        return buffer.getvalue()
    if fmt == "qasm2":
        from qiskit import qasm2

        try:
            return qasm2.dumps(circuit).encode() + b"\n"
        except Exception as exc:
            raise Unexpressible(f"not expressible in OpenQASM 2: {_first_line(exc)}") from exc
    if fmt == "qasm3":
        from qiskit import qasm3

        try:
            return qasm3.dumps(circuit).encode() + b"\n"
        except Exception as exc:
            raise Unexpressible(f"not expressible in OpenQASM 3: {_first_line(exc)}") from exc
    if fmt == "txt":
        return str(circuit.draw(output="text")).encode() + b"\n"
    raise Invalid(f"unknown format view .{fmt}")
