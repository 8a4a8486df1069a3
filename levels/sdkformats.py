"""Circuit formats of other SDKs: Quil, Cirq JSON, Braket and QIR, through maintained converters.

Nothing here translates gates by hand; each format is made by the converter that keeps
the most of a circuit while importing the least (see README, "SDK formats"):
- Cirq JSON: Cirq's own OpenQASM 2 importer (cirq.contrib.qasm_import) on Qiskit's
  OpenQASM 2 export, then `cirq.to_json`; a written one is read by `cirq.read_json` and
  brought back by Cirq's own `cirq.qasm`.
- QIR: qbraid-qir's OpenQASM 3 -> QIR converter (on pyqir) on Qiskit's OpenQASM 3 export,
  as LLVM text (`str` of the pyqir module).
- Quil and Braket: qBraid's transpiler (`qbraid.transpile`), since pyQuil reads no OpenQASM
  and Braket's own OpenQASM interpreter does not take `include "stdgates.inc"`; the bytes
  are made by the SDK itself (`Program.out()`, Braket's OpenQASM program IR as JSON). A
  written Quil program is read by pyQuil, brought to OpenQASM 3 by qBraid.
The OpenQASM made of a written program is the version's program for every other view,
and the fabric's parser checks it like any write.

SDKs are imported only inside the function that needs them, so a worker that never
renders or reads a format never imports its SDK (each takes 1-2 s to import). The one
coupling: importing qBraid's conversions imports every SDK it converts between, so a
.quil or .braket.json view imports Cirq and Braket (or pyQuil) as well. These functions run
in worker processes (levels/workers.py), like every other parse.
"""

import dataclasses
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from levels.errors import Invalid, Unexpressible, first_line
from levels.qasm import ProgramLimits, circuit_stats, parse_program, program_text

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

    from levels.qasm import CircuitStats


def _transpile(program: Any, target: str) -> Any:
    import qbraid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyQuil's deprecation notices, qBraid's path notes
        return qbraid.transpile(program, target)


def _quil(circuit: "QuantumCircuit") -> bytes:
    return _transpile(circuit, "pyquil").out().encode()


def _cirq_json(circuit: "QuantumCircuit") -> bytes:
    import cirq
    from cirq.contrib.qasm_import import circuit_from_qasm
    from qiskit import qasm2

    return cirq.to_json(circuit_from_qasm(qasm2.dumps(circuit))).encode() + b"\n"


def _braket_json(circuit: "QuantumCircuit") -> bytes:
    from braket.circuits.serialization import IRType

    program = _transpile(circuit, "braket").to_ir(IRType.OPENQASM)
    return program.json(indent=2).encode() + b"\n"


def _qir(circuit: "QuantumCircuit") -> bytes:
    from qbraid_qir.qasm3 import qasm3_to_qir
    from qiskit import qasm3

    return str(qasm3_to_qir(qasm3.dumps(circuit), name=circuit.name)).encode()


def _quil_to_qasm(text: str) -> bytes:
    from pyquil import Program

    program = Program(text)  # pyQuil's own parser: its message is the refusal
    return str(_transpile(program, "qasm3")).encode()


def _cirq_json_to_qasm(text: str) -> bytes:
    import cirq

    circuit = cirq.read_json(json_text=text)
    if not isinstance(circuit, cirq.Circuit):
        raise ValueError(f"the JSON holds a {type(circuit).__name__}, not a cirq.Circuit")
    return cirq.qasm(circuit).encode()


@dataclasses.dataclass(frozen=True)
class SdkFormat:
    """One SDK's format: the view's suffix, whose it is, how a circuit becomes its bytes
    and, for a format that may be written, how its text becomes OpenQASM."""

    suffix: str
    sdk: str
    export: Callable[["QuantumCircuit"], bytes]
    read: Callable[[str], bytes] | None = None


FORMATS = {f.suffix: f for f in (
    SdkFormat("quil", "pyQuil", _quil, _quil_to_qasm),
    SdkFormat("cirq.json", "Cirq", _cirq_json, _cirq_json_to_qasm),
    SdkFormat("braket.json", "Amazon Braket", _braket_json),
    SdkFormat("ll", "QIR", _qir),
)}
SDK_FORMATS = tuple(FORMATS)
# `cp bell.quil /circuits/` imports circuit `bell`: the suffixes such a file may carry.
IMPORTS = ("qasm", *(s for s, f in FORMATS.items() if f.read is not None))


def render(circuit: "QuantumCircuit", suffix: str) -> bytes:
    """The bytes of one SDK view; Unexpressible with the converter's reason."""
    fmt = FORMATS[suffix]
    try:
        return fmt.export(circuit)
    except Exception as exc:
        raise Unexpressible(f"not expressible in {fmt.sdk} ({suffix}): "
                            f"{first_line(exc)}") from exc


def split_import(filename: str) -> tuple[str, str] | None:
    """(`bell`, `quil`) for `bell.quil` written into /circuits (and the other IMPORTS),
    else None; dot files stay scratch."""
    for suffix in IMPORTS:
        tail = f".{suffix}"
        if filename.endswith(tail) and len(filename) > len(tail) and filename[0] != ".":
            return filename[: -len(tail)], suffix
    return None


# -- jobs for worker processes (levels/workers.py): bytes in, plain data out ---------------


def render_view(source: bytes, title: str, suffix: str) -> bytes | str:
    """One SDK view of a stored version (its OpenQASM): the bytes, or why it cannot be."""
    circuit = parse_program(source, ProgramLimits(max_bytes=len(source)))
    circuit.name = title
    try:
        return render(circuit, suffix)
    except Unexpressible as exc:
        return str(exc)


def prepare(suffix: str, written: bytes, limits: ProgramLimits) -> "tuple[bytes, CircuitStats]":
    """A written Quil or Cirq JSON program: read by its SDK, brought to OpenQASM, checked
    and measured by the fabric's parser. Returns (the OpenQASM, its stats); Invalid
    with the SDK's own message when it refuses."""
    fmt = FORMATS[suffix]
    assert fmt.read is not None
    text = program_text(written, limits)
    try:
        qasm = fmt.read(text)
    except Exception as exc:
        raise Invalid(f"{suffix} rejected by {fmt.sdk}: {first_line(exc)}") from exc
    return qasm, circuit_stats(qasm, parse_program(qasm, limits))
