"""The stats of an OpenQASM 2 program read from Qiskit's parser output, without the circuit.

`qiskit.qasm2.loads` runs in two stages: a Rust parser that does all of the validation and
yields bytecode, and a Python loop (`from_bytecode`) that builds a QuantumCircuit from it,
one gate object per operation. A new version only needs the stats (qubits, clbits, counts,
depth, size), and for a small program the Python loop and the stats over the circuit are
three quarters of its parse: the write path of `cp` waits on it for every file.

So a new OpenQASM 2 version is checked by the same Rust parser and its stats are counted
from the bytecode here, by QuantumCircuit's own rules (`stats_of`). Programs with
classically conditioned operations, which Qiskit turns into control flow with rules of its
own, are left to the whole circuit (`stats_of` returns None). Qiskit's bytecode interface
is private, so tests compare these stats with Qiskit's for a corpus of programs on every
run.
"""

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from levels.errors import Invalid, first_line


@dataclass(frozen=True)
class BytecodeStats:
    """What QuantumCircuit would say of the program: counts, depth() and size()."""

    num_qubits: int
    num_clbits: int
    depth: int
    size: int
    gate_counts: dict[str, int]


class _Refused(Exception):
    """The parser, or a constructor `from_bytecode` calls, refused the program."""


def stats_of(text: str) -> BytecodeStats | None:
    """The program's stats, Invalid with the parser's reason, or None where the whole
    circuit must say (a conditioned operation, or bytecode this module does not read)."""
    from qiskit._accelerate import qasm2 as parser
    from qiskit.qasm2 import LEGACY_CUSTOM_INSTRUCTIONS

    try:
        bytecode = _refusing(lambda: parser.bytecode_from_string(
            text, [], _parser_instructions(), (), False))
        return _Counter(LEGACY_CUSTOM_INSTRUCTIONS, parser.OpCode).run(bytecode)
    except _Refused as refused:
        reason = refused.__cause__ or refused
        raise refusal(reason) from reason
    except Exception:  # not the program's fault: let the whole circuit answer
        return None


def refusal(exc: BaseException) -> Invalid:
    """What a program gets for an error of Qiskit's OpenQASM 2 loader, by either path."""
    return Invalid(f"OpenQASM 2 rejected by Qiskit: {first_line(exc)}")


def _refusing(parse: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    """The parser's bytecode, its errors (raised as it goes) marked as refusals."""
    try:
        yield from parse()
    except Exception as exc:
        raise _Refused from exc


@functools.cache
def _parser_instructions() -> list[Any]:
    """qasm2.loads's legacy instructions as the Rust parser takes them (made once)."""
    from qiskit._accelerate import qasm2 as parser
    from qiskit.qasm2 import LEGACY_CUSTOM_INSTRUCTIONS

    return [parser.CustomInstruction(c.name, c.num_params, c.num_qubits, c.builtin)
            for c in LEGACY_CUSTOM_INSTRUCTIONS]


class _Counter:
    """One pass over the bytecode. Operation names come from the constructors that
    `from_bytecode` would call, in the same gate table order: the custom instructions, U
    and CX where those do not name them, qelib1.inc's gates as included, then each gate
    and opaque the program declares (named as declared)."""

    def __init__(self, custom: tuple[Any, ...], opcode: Any) -> None:
        from qiskit.circuit import library
        from qiskit.qasm2.parse import QELIB1

        self._qelib1 = QELIB1
        self._op = opcode
        self._table: list[Callable[..., Any] | str] = [c.constructor for c in custom]
        named = {c.name for c in custom}
        self._table += [gate for name, gate in (("U", library.UGate), ("CX", library.CXGate))
                        if name not in named]
        self._names: dict[int, str] = {}  # gate id -> the operation's name
        self._checking: set[int] = set()  # gate ids whose constructor checks each use
        self._applied: list[int | str] = []  # gate ids, or the name of any other operation
        self._qubit_depths: list[int] = []
        self._clbit_depths: list[int] = []

    def run(self, bytecode: Iterator[Any]) -> BytecodeStats | None:
        """Count every operation of the program; None at one measured otherwise."""
        op, on_qubits = self._op, self._qubit_depths
        gate_opcode, applied, names, checking = op.Gate, self._applied, self._names, \
            self._checking
        for instruction in bytecode:
            code, operands = instruction.opcode, instruction.operands
            if code == gate_opcode:  # most of a program: _apply's rule, inlined
                gate, parameters, qubits = operands
                if gate not in names or gate in checking:
                    names[gate] = self._name(gate, parameters)
                applied.append(gate)
                if len(qubits) == 1:
                    on_qubits[qubits[0]] += 1
                else:
                    depth = max([on_qubits[q] for q in qubits], default=0) + 1
                    for q in qubits:
                        on_qubits[q] = depth
            elif code == op.Measure:
                qubit, clbit = operands
                self._apply("measure", (qubit,), (clbit,))
            elif code == op.Reset:
                self._apply("reset", operands, ())
            elif code == op.Barrier:
                self._apply("barrier", operands[0], (), layers=0)
            elif code == op.DeclareQreg:
                on_qubits += [0] * operands[1]
            elif code == op.DeclareCreg:
                self._clbit_depths += [0] * operands[1]
            elif code == op.SpecialInclude:
                self._table += [self._qelib1[index] for index in operands[0]]
            elif code in (op.DeclareGate, op.DeclareOpaque):
                self._table.append(operands[0])
                if code == op.DeclareGate:  # its body is the gate's, not the program's
                    for inner in bytecode:
                        if inner.opcode == op.EndDeclareGate:
                            break
            else:  # a conditioned operation (control flow in Qiskit), or one unknown here
                return None
        return self._stats()

    def _name(self, gate: int, parameters: tuple) -> str:
        """The name of gate `gate`, from its constructor called as `from_bytecode` would.
        The gate library's classes take any angle, so one call names them for the whole
        program; any other constructor (the legacy u0 and delay check their parameter) is
        called at each use, so that a bad value anywhere refuses the program as loads does."""
        entry = self._table[gate]
        if isinstance(entry, str):
            return entry
        if not (isinstance(entry, type) and entry.__module__.startswith("qiskit.circuit.")):
            self._checking.add(gate)
        try:
            return str(entry(*parameters).name)
        except Exception as exc:
            raise _Refused from exc

    def _apply(self, name: str, qubits: Any, clbits: Any, layers: int = 1) -> None:
        """QuantumCircuit.depth's rule: an operation starts after everything on its bits
        and adds `layers` (a barrier lines its bits up and adds none)."""
        on_qubits, on_clbits = self._qubit_depths, self._clbit_depths
        depth = max(max((on_qubits[q] for q in qubits), default=0),
                    max((on_clbits[c] for c in clbits), default=0)) + layers
        for q in qubits:
            on_qubits[q] = depth
        for c in clbits:
            on_clbits[c] = depth
        self._applied.append(name)

    def _stats(self) -> BytecodeStats:
        """count_ops' order: by count, ties in order of first appearance; size() leaves
        barriers out."""
        counts: Counter[str] = Counter()
        for name in self._applied:
            counts[name if isinstance(name, str) else self._names[name]] += 1
        size = len(self._applied) - counts["barrier"]
        return BytecodeStats(len(self._qubit_depths), len(self._clbit_depths),
                             max(self._qubit_depths + self._clbit_depths, default=0), size,
                             dict(sorted(counts.items(), key=lambda kv: -kv[1])))
