"""A version's depth and size (stats.json, the search index) are Qiskit's
QuantumCircuit.depth() and size(), however levels.qasm computes them."""

import random

import pytest
from qiskit import QuantumCircuit, qasm2
from qiskit.circuit.random import random_circuit

from levels import qasm2_stats
from levels.errors import Invalid, TooBig
from levels.qasm import ProgramLimits, check_source, circuit_stats, parse_program, prepare


def _random(seed: int) -> QuantumCircuit:
    rng = random.Random(seed)
    circuit = random_circuit(rng.randint(1, 6), rng.randint(1, 12), max_operands=3,
                             measure=seed % 2 == 0, conditional=seed % 7 == 0,
                             reset=seed % 3 == 0, seed=seed)
    if seed % 5 == 0:
        circuit.barrier(*rng.sample(range(circuit.num_qubits), rng.randint(1, circuit.num_qubits)))
        circuit.h(0)
    return circuit


@pytest.mark.parametrize("chunk", range(4))
def test_depth_and_size_are_qiskits(chunk):
    for seed in range(chunk * 100, chunk * 100 + 100):
        circuit = _random(seed)
        stats = circuit_stats(b"", circuit)
        assert (stats.depth, stats.size) == (circuit.depth(), circuit.size()), seed


def test_depth_of_a_program_with_its_own_gate_and_a_condition():
    source = ('OPENQASM 2.0;\ninclude "qelib1.inc";\ngate pair a, b { h a; cx a, b; }\n'
              "qreg q[3];\ncreg c[3];\npair q[0], q[1];\npair q[1], q[2];\nmeasure q -> c;\n")
    circuit = qasm2.loads(source, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    assert circuit_stats(b"", circuit).depth == circuit.depth() == 3
    with_condition = qasm2.loads(source + "if(c==1) x q[0];\n",
                                 custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    stats = circuit_stats(b"", with_condition)
    assert (stats.depth, stats.size) == (with_condition.depth(), with_condition.size())


def _as_qasm2(circuit: QuantumCircuit) -> bytes:
    return qasm2.dumps(circuit).encode()


_HANDWRITTEN = [
    # registers declared in mixed order, broadcast gates and measures, builtins and qelib1
    'OPENQASM 2.0;\ninclude "qelib1.inc";\ncreg c[2];\nqreg a[2];\ncreg d[1];\nqreg b[3];\n'
    "U(0.1,0.2,0.3) a[0];\nCX a[0],b[2];\nh b;\ncx a[1],b;\nid a[1];\nu0(1) b[1];\n"
    "measure a -> c;\nmeasure b[2] -> d[0];\nreset a[0];\nbarrier a[1],b;\nx b[0];\n",
    # the program's own gates and opaques, a delay, a barrier of everything
    'OPENQASM 2.0;\ninclude "qelib1.inc";\ngate g(t) x, y { rz(t) x; cx x, y; }\n'
    "opaque box(a, b) x, y, z;\nopaque delay(t) x;\nqreg q[4];\ncreg c[4];\n"
    "g(0.5) q[0], q[1];\nbox(1, 2) q[1], q[2], q[3];\ndelay(100) q[3];\nbarrier q;\n"
    "g(1) q[2], q[3];\nmeasure q -> c;\n",
    # no include: only the builtins; a register never used
    "OPENQASM 2.0;\nqreg q[2];\nqreg idle[3];\ncreg c[1];\nU(0,0,0) q[0];\nCX q[0],q[1];\n"
    "measure q[1] -> c[0];\n",
    # a register declared after operations on the others
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nh q[0];\n'
    "measure q[0] -> c[0];\nqreg r[2];\ncreg d[1];\ncx q[0], r[1];\nmeasure r[1] -> d[0];\n",
    # no operations at all
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\n',
    # a barrier alone, and a barrier after a measure that lines up a clbit-free set
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nbarrier q;\n'
    "measure q[0] -> c[0];\nbarrier q[1];\nh q[1];\n",
]


@pytest.mark.parametrize("chunk", range(4))
def test_a_new_versions_stats_from_the_parsers_bytecode_are_qiskits(chunk):
    """qasm.prepare measures OpenQASM 2 from the parser's bytecode: it must say exactly
    what the whole circuit says, counts in their order too (stats.json shows them)."""
    sources = [_as_qasm2(_random(seed)) for seed in range(chunk * 100, chunk * 100 + 100)]
    sources += [text.encode() for text in _HANDWRITTEN] if chunk == 0 else []
    measured_from_bytecode = 0
    for source in sources:
        whole = circuit_stats(source, parse_program(source, ProgramLimits()))
        fast = prepare(source, ProgramLimits())
        assert fast == whole, source.decode()
        assert list(fast.gate_counts.items()) == list(whole.gate_counts.items())
        measured_from_bytecode += qasm2_stats.stats_of(source.decode()) is not None
    assert measured_from_bytecode >= len(sources) * 0.8  # most go the fast way


def test_conditioned_programs_are_measured_from_the_whole_circuit():
    source = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\n'
              "measure q[0] -> c[0];\nif(c==1) x q[1];\n")
    assert qasm2_stats.stats_of(source) is None
    whole = circuit_stats(source.encode(), parse_program(source.encode(), ProgramLimits()))
    assert prepare(source.encode(), ProgramLimits()) == whole


@pytest.mark.parametrize("source", [
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncx q[0],q[0];\n',
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[2];\n',
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nnotagate q[0];\n',
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nrz q[0];\n',
])
def test_the_bytecode_path_refuses_what_qiskits_loader_refuses_with_its_reason(source):
    with pytest.raises(Invalid) as whole:
        parse_program(source.encode(), ProgramLimits())
    with pytest.raises(Invalid) as fast:
        prepare(source.encode(), ProgramLimits())
    assert str(fast.value) == str(whole.value)


def test_the_bytecode_path_keeps_the_operation_and_qubit_limits():
    many = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\n' + "barrier q[0];\nx q[0];\n" * 6
    limits = ProgramLimits(max_operations=5)
    with pytest.raises(TooBig) as whole:
        parse_program(many.encode(), limits)
    with pytest.raises(TooBig) as fast:
        prepare(many.encode(), limits)
    assert str(fast.value) == str(whole.value) == (
        "6 operations; the limit is 5 (circuit_fs.max_program_operations)")
    assert prepare(many.encode(), ProgramLimits(max_operations=6)).size == 6  # barriers are free


@pytest.mark.parametrize("operations", [
    "u0(1) q[0];\nu0(0.5) q[0];",  # u0 takes a whole number of delay lengths
    'delay(100) q[0];\ndelay(-5) q[0];',  # a delay is positive
    "u0(1) q[0];\nu0(1e400) q[0];",
])
def test_a_bad_parameter_refuses_the_program_wherever_it_is_used(operations):
    """Qiskit builds every operation, so a constructor that checks its parameter refuses
    the program at any use, not only the first of that gate."""
    source = ("OPENQASM 2.0;\nopaque delay(t) a;\nqreg q[1];\n" + operations + "\n").encode()
    with pytest.raises(Invalid) as whole:
        parse_program(source, ProgramLimits())
    with pytest.raises(Invalid) as fast:
        prepare(source, ProgramLimits())
    assert str(fast.value) == str(whole.value)


@pytest.mark.parametrize("declarations, refusal", [
    ("qreg bit[600];\ncreg c[600];", None),  # a register named bit is 600 qubits, no bits
    ("qreg qubit[600];", None),
    ("creg qubit[1100];", "declares 1100 classical bits"),
    ("qreg q[3];\nbit[1100] b;", "declares 1100 classical bits"),  # OpenQASM 3's form
])
def test_each_declaration_counts_once_against_the_limits(declarations, refusal):
    source = f"OPENQASM 2.0;\n{declarations}\n".encode()
    if refusal is None:
        check_source(source, ProgramLimits())
        return
    with pytest.raises(TooBig, match=refusal):
        check_source(source, ProgramLimits())
