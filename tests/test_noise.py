"""A noisy run's errors against Aer with the device's own noise, built here from Qiskit.

qfs builds the noise of a task's qubits alone; it must be the device's noise restricted to
them, so the error rate of a run on a coupled pair has to match that of an AerSimulator
given NoiseModel.from_backend of the whole GenericBackendV2 the device is."""

import json
import math

import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel

from tests.test_execution import last_result
from tests.test_qubits import command, mapping

pytestmark = pytest.mark.fuse

QUBITS, SEED, SHOTS = 6, 5, 8000
# |11>, then cx twice with a barrier between (nothing cancels): ideally always 11, the
# pair relaxing and depolarising meanwhile
PAIRS = 25
PROGRAM = "\n".join(["OPENQASM 2.0;", 'include "qelib1.inc";', "qreg q[2];", "creg c[2];",
                     "x q[0];", "x q[1];", *["cx q[0],q[1];\nbarrier q;"] * (2 * PAIRS),
                     "measure q -> c;", ""])


def _device() -> GenericBackendV2:
    """The device qfs makes of `{qubits: 6, topology: linear, seed: 5}`: GenericBackendV2
    on the chain's couplings, both directions."""
    edges = [[i, i + 1] for i in range(QUBITS - 1)]
    return GenericBackendV2(num_qubits=QUBITS, basis_gates=["cx", "id", "rz", "sx", "x"],
                            coupling_map=edges + [[b, a] for a, b in edges],
                            control_flow=True, seed=SEED)


def _error_rate(counts: dict[str, int]) -> float:
    return 1 - counts.get("11", 0) / sum(counts.values())


def test_noisy_run_matches_aer_with_the_devices_own_noise(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("live_qubit_mgr:\n  devices:\n"
                      f"    - {{name: chain, qubits: {QUBITS}, topology: linear, seed: {SEED}}}\n")
    qfs = mount_factory(extra=["--config", str(config)])
    qfs.write_circuit("pairs", PROGRAM)
    command(qfs.qubits / "ctl", "alloc 2 task=n topology=linear")
    physical = mapping(qfs, "n")
    backend = _device()
    for q in physical:  # the device qfs shows is the one built here
        shown = json.loads((qfs.qubits / f"q{q}" / "calibration.json").read_text())
        assert shown["t1"] == pytest.approx(backend.qubit_properties(q).t1)
        assert shown["readout_error"] == pytest.approx(backend.target["measure"][(q,)].error)
    ctl = qfs.qubits / "tasks" / "n" / "ctl"
    command(ctl, f"run pairs shots={SHOTS} noise=on seed=17")
    ours = _error_rate(last_result(qfs, "pairs")["counts"])
    command(ctl, f"run pairs shots={SHOTS} noise=off seed=17")
    assert last_result(qfs, "pairs")["counts"] == {"11": SHOTS}

    circuit = transpile(QuantumCircuit.from_qasm_str(PROGRAM), backend,
                        initial_layout=physical, optimization_level=1, seed_transpiler=0)
    simulator = AerSimulator(noise_model=NoiseModel.from_backend(backend))
    theirs = _error_rate(simulator.run(circuit, shots=SHOTS, seed_simulator=99)
                         .result().get_counts())
    assert theirs > 0.02  # enough noise to compare
    spread = math.sqrt(2 * theirs * (1 - theirs) / SHOTS)
    assert abs(ours - theirs) < 5 * spread, (ours, theirs)
