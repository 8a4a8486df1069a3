"""Views in other SDKs' formats (vN.quil, vN.cirq.json, vN.braket.json, vN.ll) and writes in
them, through a real mount: each view loads in its own SDK and, where that SDK simulates,
gives Qiskit's state (fidelity computed by qiskit.quantum_info)."""

import errno
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from qiskit import qasm3
from qiskit.quantum_info import Statevector, state_fidelity

from levels.qasm import parse_program

# Asymmetric in its qubits, so a state read in the wrong qubit order would not match.
PROGRAM = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
h q[0];
cx q[0], q[1];
ry(0.7) q[2];
cx q[2], q[1];
t q[2];
sx q[0];
U(0.1, 0.2, 0.3) q[1];
cp(0.4) q[0], q[2];
"""
DYNAMIC = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
c[0] = measure q[0];
if (c[0]) x q[1];
"""
QUIL = "DECLARE ro BIT[2]\nH 0\nCNOT 0 1\nRX(pi/3) 1\nMEASURE 0 ro[0]\nMEASURE 1 ro[1]\n"
SDK_VIEWS = ("quil", "cirq.json", "braket.json", "ll")


def _little_endian(amplitudes: np.ndarray, qubits: int) -> Statevector:
    """A state whose first qubit is the most significant bit, in Qiskit's order."""
    return Statevector(np.asarray(amplitudes).reshape([2] * qubits).transpose().reshape(-1))


def _quil_state(text: str, qubits: int) -> Statevector:
    from pyquil import Program
    from pyquil.simulation import NumpyWavefunctionSimulator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated for pyQuil 5, still pyQuil 4's own
        simulator = NumpyWavefunctionSimulator(n_qubits=qubits)
        simulator.do_program(Program(text))
    return Statevector(simulator.wf.transpose().reshape(-1))  # axis k is qubit k


def _cirq_state(text: str, qubits: int) -> Statevector:
    import cirq

    circuit = cirq.read_json(json_text=text)
    order = sorted(circuit.all_qubits(), key=lambda q: int(str(q).rsplit("_", 1)[1]))
    assert len(order) == qubits
    return _little_endian(cirq.final_state_vector(circuit, qubit_order=order,
                                                  dtype=np.complex128), qubits)


def _braket_state(text: str, qubits: int) -> Statevector:
    from braket.circuits import Circuit
    from braket.circuits.measure import Measure
    from braket.devices import LocalSimulator
    from braket.ir.openqasm import Program

    loaded = Circuit.from_ir(Program.parse_raw(text))
    unitary = Circuit([i for i in loaded.instructions if not isinstance(i.operator, Measure)])
    unitary.state_vector()
    result = LocalSimulator("braket_sv").run(unitary, shots=0).result()
    return _little_endian(result.values[0], qubits)


def _parse_qir(text: str) -> None:
    import pyqir

    module = pyqir.Module.from_ir(pyqir.Context(), text)
    assert module.verify() is None
    assert any(pyqir.is_entry_point(f) for f in module.functions)


@pytest.mark.fuse
def test_sdk_views_load_in_their_sdk_and_give_qiskits_state(qfs):
    circuit = qfs.write_circuit("mix", PROGRAM)
    expected = Statevector(qasm3.loads(PROGRAM))
    views = {fmt: (circuit / f"v1.{fmt}").read_bytes() for fmt in SDK_VIEWS}
    for fmt, data in views.items():
        assert os.stat(circuit / f"v1.{fmt}").st_size == len(data)
        assert f"v1.{fmt}" not in os.listdir(circuit)  # unlisted: ls imports no SDK

    assert state_fidelity(expected, _quil_state(views["quil"].decode(), 3)) >= 1 - 1e-9
    assert state_fidelity(expected, _cirq_state(views["cirq.json"].decode(), 3)) >= 1 - 1e-9
    assert state_fidelity(expected, _braket_state(views["braket.json"].decode(), 3)) >= 1 - 1e-9
    _parse_qir(views["ll"].decode())  # no QIR simulator here: parsed and verified by pyqir

    # A version a format cannot express has no such file; stats.json says why.
    (circuit / "latest.qasm").write_text(DYNAMIC)
    with pytest.raises(OSError) as refused:
        (circuit / "v2.cirq.json").read_bytes()
    assert refused.value.errno == errno.EINVAL
    stats = json.loads((circuit / "stats.json").read_text())
    reason = stats["versions"][1]["unavailable_views"]["cirq.json"]
    assert reason.startswith("not expressible in Cirq (cirq.json): ")
    assert "unavailable_views" not in stats["versions"][0]
    _parse_qir((circuit / "v2.ll").read_text())  # QIR holds the measurement and the branch


@pytest.mark.fuse
def test_a_version_written_as_quil_keeps_its_bytes_when_a_backup_moves_it(qfs):
    """Into a circuit made by mkdir, a version written as Quil floats: the v1.qasm of a
    backup written after it takes v1, and the Quil version moves to v2 with the bytes it
    was written as (they once stayed behind, v2.quil unreadable)."""
    from tests.conftest import BELL

    (qfs.circuits / "c").mkdir()
    (qfs.circuits / "c.quil").write_text(QUIL)
    (qfs.circuits / "c" / "v1.qasm").write_text(BELL)
    c = qfs.circuits / "c"
    assert "v2.qasm" in os.listdir(c)  # listed: no longer being written back
    assert (c / "v1.qasm").read_text() == BELL
    assert (c / "v2.quil").read_text() == QUIL
    versions = json.loads((c / "stats.json").read_text())["versions"]
    assert [(v["version"], v.get("written_as")) for v in versions] == [(1, None), (2, "quil")]


def test_quil_and_cirq_json_written_are_kept_as_written_with_every_other_view(qfs):
    import cirq

    (qfs.circuits / "bell.quil").write_text(QUIL)
    bell = qfs.circuits / "bell"
    assert (bell / "v1.quil").read_text() == QUIL  # byte-identical
    stats = json.loads((bell / "stats.json").read_text())["versions"][0]
    assert stats["written_as"] == "quil" and stats["written_bytes"] == len(QUIL)
    program = parse_program((bell / "v1.qasm").read_bytes())  # its OpenQASM, for every view
    expected = Statevector(program.remove_final_measurements(inplace=False))
    gates = "".join(line for line in QUIL.splitlines(keepends=True)
                    if not line.startswith(("DECLARE", "MEASURE")))
    assert state_fidelity(expected, _quil_state(gates, 2)) >= 1 - 1e-9
    assert (bell / "v1.qpy").stat().st_size > 0
    assert _braket_state((bell / "v1.braket.json").read_text(), 2).equiv(expected)

    # Cirq JSON written to an existing circuit is its next version, kept as written.
    q = cirq.LineQubit.range(2)
    ghz = cirq.Circuit([cirq.H(q[0]), cirq.CNOT(q[0], q[1]), cirq.ry(0.25).on(q[1])])
    written = cirq.to_json(ghz)
    (qfs.circuits / "bell.cirq.json").write_text(written)
    assert sorted(v["version"] for v in json.loads((bell / "stats.json").read_text())[
        "versions"]) == [1, 2]
    assert (bell / "v2.cirq.json").read_text() == written
    want = _little_endian(cirq.final_state_vector(ghz, qubit_order=q, dtype=np.complex128), 2)
    assert state_fidelity(want, Statevector(parse_program((bell / "v2.qasm").read_bytes()))) \
        >= 1 - 1e-9
    assert state_fidelity(want, _quil_state((bell / "v2.quil").read_text(), 2)) >= 1 - 1e-9

    # Refused input: EINVAL at close with the SDK's own message, nothing stored.
    for leaf, text, message in (("bad.quil", "H 0\nFOO BAR(\n", "error while parsing"),
                                ("bell.cirq.json", '{"cirq_type": "Nope"}',
                                 "Could not resolve type 'Nope'")):
        f = open(qfs.circuits / leaf, "w")
        f.write(text)
        with pytest.raises(OSError) as refused:
            f.close()
        assert refused.value.errno == errno.EINVAL
        assert message in (qfs.root / ".qfs" / "log").read_text()
    assert not (qfs.circuits / "bad").exists()
    assert len(json.loads((bell / "stats.json").read_text())["versions"]) == 2


def test_a_format_never_rendered_never_imports_its_sdk():
    """In a fresh interpreter (as a worker is): the OpenQASM views import no SDK; Cirq JSON
    imports Cirq alone, QIR pyqir alone."""
    script = f"""
import sys
from levels import qasm, sdkformats
sdks = ("pyquil", "cirq", "braket", "pyqir", "qbraid")
source = {PROGRAM!r}.encode()
qasm.render_views(source, "mix", qasm.VIEW_FORMATS)
print([m for m in sdks if m in sys.modules])
assert isinstance(sdkformats.render_view(source, "mix", "ll"), bytes)
print([m for m in sdks if m in sys.modules])
assert isinstance(sdkformats.render_view(source, "mix", "cirq.json"), bytes)
print([m for m in sdks if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.splitlines() == ["[]", "['pyqir']", "['cirq', 'pyqir']"]
