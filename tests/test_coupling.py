"""Two-qubit gates run only along the device's couplings: routed within the task's own
qubits where they connect, refused with the pair named where they do not (issue 11.1).
Distributions are checked against qiskit.quantum_info, never against qfs."""

import errno
import json
import os

import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector

from tests.test_execution import fit, last_result
from tests.test_qubits import command, refused

pytestmark = pytest.mark.fuse

CX40 = ("OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\ncreg c[2];\nx q[0];\n"
        + "cx q[0],q[1];\nbarrier q;\n" * 40 + "measure q -> c;\n")


def alloc_one_by_one(qfs, task: str, physical: list[int]) -> None:
    for p in physical:
        command(qfs.qubits / f"q{p}" / "ctl", f"alloc task={task}")


def test_gates_between_uncoupled_qubits_are_refused_with_the_pair(qfs):
    neighbours = (qfs.qubits / "q21" / "neighbors").read_text().split()
    assert "q49" not in neighbours
    alloc_one_by_one(qfs, "ro", [21, 49])
    (qfs.circuits / "cx40.qasm").write_text(CX40)
    ctl = qfs.qubits / "tasks" / "ro" / "ctl"
    assert refused(ctl, "run cx40 shots=1000 noise=on seed=4") == errno.EINVAL
    reason = (qfs.root / ".qfs" / "log").read_text()
    assert "cx between q0 and q1 cannot run: they are physical qubits q21 and q49" in reason
    assert "results" not in os.listdir(qfs.circuits / "cx40") or \
        not os.listdir(qfs.circuits / "cx40" / "results")
    assert ctl.read_text().startswith("error: EINVAL")


def test_a_partly_connected_set_routes_within_its_couplings(qfs):
    """q23-q24 are coupled, q60 is far away: gates on q23/q24 run, any gate touching q60
    together with them is refused (never EIO)."""
    assert "q24" in (qfs.qubits / "q23" / "neighbors").read_text().split()
    alloc_one_by_one(qfs, "part", [23, 24, 60])
    ctl = qfs.qubits / "tasks" / "part" / "ctl"
    (qfs.circuits / "ghz.qasm").write_text(
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\nh q[0];\n'
        "cx q[0], q[1];\ncx q[1], q[2];\nc = measure q;\n")
    assert refused(ctl, "run ghz shots=100") == errno.EINVAL
    assert "cx between q1 and q2 cannot run: they are physical qubits q24 and q60" in \
        (qfs.root / ".qfs" / "log").read_text()
    source = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\nh q[0];\n'
              "cx q[0], q[1];\nx q[2];\nc = measure q;\n")
    (qfs.circuits / "pair.qasm").write_text(source)
    command(ctl, "run pair shots=4000 noise=off seed=3")
    counts = last_result(qfs, "pair")["counts"]
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.x(2)
    exact = Statevector(circuit).probabilities_dict()
    assert fit(counts, {k: v for k, v in exact.items() if v > 1e-12}) > 1e-3


def test_routing_on_a_line_gives_the_exact_distribution(qfs):
    """cx between the two ends of a 3-qubit line needs a swap; the result must still be
    the circuit's distribution."""
    command(qfs.qubits / "ctl", "alloc 3 task=line topology=linear")
    physical = [int(line.split()[1][1:]) for line in
                (qfs.qubits / "tasks" / "line" / "mapping").read_text().splitlines()]
    ends = (qfs.qubits / f"q{physical[0]}" / "neighbors").read_text().split()
    assert f"q{physical[2]}" not in ends
    (qfs.circuits / "ends.qasm").write_text(
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\nry(1.1) q[0];\n'
        "cx q[0], q[2];\nc = measure q;\n")
    command(qfs.qubits / "tasks" / "line" / "ctl", "run ends shots=4000 noise=off seed=5")
    result = last_result(qfs, "ends")
    circuit = QuantumCircuit(3)
    circuit.ry(1.1, 0)
    circuit.cx(0, 2)
    exact = Statevector(circuit).probabilities_dict()
    assert fit(result["counts"], {k: v for k, v in exact.items() if v > 1e-12}) > 1e-3
    assert json.dumps(result)  # strict JSON
