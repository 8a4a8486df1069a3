"""A version's depth and size (stats.json, the search index) are Qiskit's
QuantumCircuit.depth() and size(), however levels.qasm computes them."""

import random

import pytest
from qiskit import QuantumCircuit, qasm2
from qiskit.circuit.random import random_circuit

from levels.qasm import circuit_stats


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
