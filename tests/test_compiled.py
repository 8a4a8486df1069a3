"""Compiler integration (compiled/<device>/) and readable history (equivalence, vN.diff),
checked against Qiskit itself through a real mount."""

import difflib
import errno
import hashlib
import json
import os

import pytest
import qiskit
from qiskit import QuantumCircuit, qasm3, qpy
from qiskit.quantum_info import Operator, Statevector

from tests.conftest import BELL

pytestmark = pytest.mark.fuse

# A triangle of CX gates: no heavy-hex or linear placement holds it, so routing must swap.
TRIANGLE = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[0];
rz(0.3) q[1];
ry(0.7) q[2];
cx q[0], q[2];
"""
DEVICES = "live_qubit_mgr:\n  devices:\n" \
    "    - {name: eagle, qubits: 127, topology: heavy_hex}\n" \
    "    - {name: line3, qubits: 3, topology: linear}\n"


@pytest.fixture
def devices(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text(DEVICES)
    return mount_factory(extra=["--config", str(config)])


def _load(path) -> QuantumCircuit:
    with open(path, "rb") as f:
        (circuit,) = qpy.load(f)
    return circuit


def _active_state(compiled: QuantumCircuit, keep: list[int]) -> tuple[Statevector, list[int]]:
    """The statevector of the compiled circuit cut down to the qubits it touches (and
    `keep`), with the index each physical qubit got."""
    touched = {compiled.find_bit(q).index for i in compiled.data
               if i.operation.name not in ("barrier", "delay") for q in i.qubits}
    active = sorted(touched | set(keep))
    small = QuantumCircuit(len(active))
    for instruction in compiled.data:
        if instruction.operation.name in ("barrier", "delay"):
            continue
        small.append(instruction.operation,
                     [active.index(compiled.find_bit(q).index) for q in instruction.qubits])
    return Statevector(small), active


def test_compiled_versions_are_the_circuit_on_the_device(devices):
    tri = devices.write_circuit("tri", TRIANGLE)
    source = qasm3.loads(TRIANGLE)
    assert "compiled" not in os.listdir(tri)  # unlisted: tree walkers transpile nothing
    assert sorted(os.listdir(tri / "compiled")) == ["eagle", "line3"]

    # A 3-qubit line: the whole unitary, up to the layout Qiskit records, is the source's.
    line = _load(tri / "compiled" / "line3" / "v1.qpy")
    assert Operator.from_circuit(line).equiv(Operator(source))
    assert qasm3.loads((tri / "compiled" / "line3" / "v1.qasm").read_text()).count_ops() \
        == line.count_ops()

    # The 127-qubit device: only its basis gates and couplings, the same distribution.
    eagle = _load(tri / "compiled" / "eagle" / "v1.qpy")
    report = json.loads((tri / "compiled" / "eagle" / "v1.report.json").read_text())
    assert {i.operation.name for i in eagle.data} <= {"cx", "id", "rz", "sx", "x", "barrier"}
    for instruction in eagle.data:
        if instruction.operation.num_qubits == 2:
            a, b = (eagle.find_bit(q).index for q in instruction.qubits)
            neighbors = (devices.qubits / f"q{a}" / "neighbors").read_text().split()
            assert f"q{b}" in neighbors or str(b) in neighbors
    final = eagle.layout.final_index_layout(filter_ancillas=True)
    assert report["layout"] == {
        "initial": eagle.layout.initial_index_layout(filter_ancillas=True), "final": final}
    state, active = _active_state(eagle, final)
    compiled_probabilities = state.probabilities([active.index(p) for p in final])
    assert compiled_probabilities == pytest.approx(Statevector(source).probabilities(),
                                                   abs=1e-9)

    source_bytes = (tri / "v1.qasm").read_bytes()
    assert report["source_sha256"] == hashlib.sha256(source_bytes).hexdigest()
    assert report["qiskit_version"] == qiskit.__version__
    assert report["optimization_level"] == 1  # the default
    assert report["before"] == {"num_qubits": 3, "depth": source.depth(), "size": source.size(),
                                "two_qubit_gates": source.num_nonlocal_gates()}
    assert report["after"] == {"num_qubits": 127, "depth": eagle.depth(), "size": eagle.size(),
                               "two_qubit_gates": eagle.num_nonlocal_gates()}
    assert report["transpile_seconds"] > 0

    listed = sorted(os.listdir(tri / "compiled" / "eagle"))
    assert listed == ["v1.qasm", "v1.qpy", "v1.report.json"]
    for leaf in listed:
        path = tri / "compiled" / "eagle" / leaf
        assert os.stat(path).st_size == len(path.read_bytes())

    # meta.json's optimization_level (0..3) selects the level.
    meta = json.loads((tri / "meta.json").read_text())
    assert meta["optimization_level"] == 1
    (tri / "meta.json").write_text(json.dumps({**meta, "optimization_level": 3}))
    report = json.loads((tri / "compiled" / "eagle" / "v1.report.json").read_text())
    assert report["optimization_level"] == 3
    assert Operator.from_circuit(_load(tri / "compiled" / "line3" / "v1.qpy")).equiv(
        Operator(source))
    with pytest.raises(OSError) as refused:
        (tri / "meta.json").write_text(json.dumps({**meta, "optimization_level": 4}))
    assert refused.value.errno == errno.EINVAL

    # A version the device cannot hold has no compiled file; unknown names do not exist.
    (tri / "latest.qasm").write_text(TRIANGLE.replace("qubit[3] q;", "qubit[4] q;"))
    with pytest.raises(OSError) as refused:
        (tri / "compiled" / "line3" / "v2.qasm").read_bytes()
    assert refused.value.errno == errno.EINVAL
    assert sorted(os.listdir(tri / "compiled" / "line3")) == [
        "v1.qasm", "v1.qpy", "v1.report.json"]
    for missing in ("compiled/nowhere", "compiled/eagle/v9.qasm", "compiled/eagle/v1.txt"):
        assert not (tri / missing).exists()


def _expected_equivalence(before: str, after: str) -> bool:
    """Qiskit's own verdict on two unitary-then-measure programs."""
    a, b = QuantumCircuit.from_qasm_str(before), QuantumCircuit.from_qasm_str(after)
    return Operator(a.remove_final_measurements(inplace=False)).equiv(
        Operator(b.remove_final_measurements(inplace=False)))


def test_history_says_which_versions_compute_the_same_and_what_changed(qfs):
    same = BELL.replace("h q[0];", "h q[0];\nx q[1];\nx q[1];")
    other = BELL.replace("cx q[0],q[1];", "cx q[1],q[0];")
    mid = BELL.replace("cx q[0],q[1];", "measure q[0] -> c[0];\ncx q[0],q[1];")
    wide = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[11];\nh q[0];\n"
    wider = wide + "x q[10];\n"
    ten = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[10];\n" + "cx q[0],q[9];\n" * 130
    bell = qfs.write_circuit("bell")
    for version in (same, other, other + "// only a comment\n", mid, wide, wider, ten,
                    ten + "x q[3];\n"):
        (bell / "latest.qasm").write_text(version)
    stats = json.loads((bell / "stats.json").read_text())
    verdicts = {v["version"]: v["equivalent_to_previous"] for v in stats["versions"]}
    assert verdicts[1] is None
    assert verdicts[2] is True is _expected_equivalence(BELL, same)
    assert verdicts[3] is False is _expected_equivalence(same, other)
    assert verdicts[4] is True  # the same operations
    assert verdicts[5].startswith("unknown (measure before the end")
    assert verdicts[6] is False  # other widths
    assert verdicts[7].startswith("unknown (11 qubits")
    assert verdicts[8] is False
    assert verdicts[9] == ("unknown (10 qubits and 261 operations: over the comparison bound "
                           "of 2^27 operations x 4^qubits)")
    assert os.stat(bell / "stats.json").st_size == len((bell / "stats.json").read_bytes())

    names = os.listdir(bell)
    assert "v1.diff" not in names and {f"v{n}.diff" for n in range(2, 10)} <= set(names)
    assert not (bell / "v1.diff").exists()
    diff = (bell / "v3.diff").read_text()
    assert diff == "".join(difflib.unified_diff(same.splitlines(keepends=True),
                                                other.splitlines(keepends=True),
                                                "v2.qasm", "v3.qasm"))
    assert os.stat(bell / "v3.diff").st_size == len(diff.encode())
