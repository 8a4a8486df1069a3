"""Level 1 without FUSE: live state against qiskit.quantum_info, triggers, control grammar."""

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector, partial_trace, random_statevector, state_fidelity

from levels import ctl
from levels.ctl import GateAction, SetAction, StopAction
from levels.errors import Invalid
from levels.feedforward import Trigger, dispatch_live
from levels.livestate import LiveState


@pytest.mark.parametrize(("name", "qubits", "params"), [
    ("x", (0,), ()), ("h", (2,), ()), ("rz", (1,), (0.3,)), ("u", (3,), (0.1, 0.2, 0.3)),
    ("cx", (0, 3), ()), ("cx", (3, 1), ()), ("cz", (2, 0), ()), ("swap", (1, 2), ()),
    ("crx", (2, 1), (0.7,)), ("ccx", (3, 0, 2), ()),
])
def test_gates_match_qiskit(name, qubits, params):
    start = random_statevector(16, seed=11)
    state = LiveState(4)
    state.vector = np.asarray(start.data).copy()
    state.apply_gate(name, qubits, params)
    reference = QuantumCircuit(4)
    getattr(reference, name)(*params, *qubits)
    expected = start.evolve(reference)
    assert state_fidelity(Statevector(state.vector), expected) == pytest.approx(1, abs=1e-12)


def test_measurement_collapses_with_born_probabilities():
    rng = np.random.default_rng(1)
    ones = 0
    for _ in range(2000):
        state = LiveState(2, rng)
        state.apply_gate("ry", (0,), (2 * np.arcsin(np.sqrt(0.3)),))
        outcome = state.measure(0)
        ones += outcome
        assert state.probability_of_one(0) == pytest.approx(outcome)
        assert np.linalg.norm(state.vector) == pytest.approx(1)
    assert abs(ones / 2000 - 0.3) < 0.04


def test_live_teleportation_fidelity():
    psi = random_statevector(2, seed=5)
    prep = QuantumCircuit(3)
    prep.initialize(psi.data, [0])
    prep.h(1)
    prep.cx(1, 2)
    prep.cx(0, 1)
    prep.h(0)
    triggers = [Trigger(1, 1, 1, (GateAction("x", (2,)),)),
                Trigger(2, 0, 1, (GateAction("z", (2,)),), prio=1)]
    for seed in range(8):
        state = LiveState(3, np.random.default_rng(seed))
        state.vector = np.asarray(Statevector.from_instruction(prep).data)
        dispatch_live(state, 0, triggers, {})
        result = dispatch_live(state, 1, triggers, {})
        assert result.latency_ns > 0
        received = partial_trace(Statevector(state.vector), [0, 1])
        assert state_fidelity(received, psi) == pytest.approx(1, abs=1e-10)


def test_set_and_stop_actions():
    state = LiveState(1)
    state.apply_gate("x", (0,))
    params: dict[str, float] = {}
    trigger = Trigger(1, 0, 1, (SetAction("theta", 0.5), StopAction()))
    result = dispatch_live(state, 0, [trigger], params)
    assert result.stopped and result.fired == [1] and params == {"theta": 0.5}


def test_control_grammar():
    assert ctl.parse_device_command("alloc 4 task=vqe topology=linear noise=0.95 "
                                    "isolate=strict") == ctl.Alloc(4, "vqe", "linear", 0.95,
                                                                   "strict")
    on = ctl.parse_qubit_command("on 1 do h q2; cz q2 q0 prio=3")
    assert on == ctl.On(1, (GateAction("h", (2,)), GateAction("cz", (2, 0))), 3)
    assert ctl.parse_qubit_command("on 0 do rz(0.5) q1").actions == (
        GateAction("rz", (1,), (0.5,)),)
    assert ctl.parse_task_command("run bell@v2 shots=10 noise=off") == ctl.Run(
        "bell", 2, 10, False, None)
    parsers = (ctl.parse_device_command, ctl.parse_qubit_command, ctl.parse_task_command)
    for bad in ("alloc", "alloc 0 task=x", "alloc 2", "alloc 2 task=x noise=2", "on 1 do",
                "on 1 do x q1 q1", "run", "measure 3", "alloc 2 task=x\nalloc 3 task=y"):
        for parse in parsers:
            with pytest.raises(Invalid):
                parse(bad)


def test_compiled_triggers_reach_a_qubit_the_circuit_leaves_idle():
    from qiskit_aer import AerSimulator
    from scipy.stats import chisquare

    from levels.feedforward import compile_dynamic, width

    bell = QuantumCircuit(2, 2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure([0, 1], [0, 1])
    flip = [Trigger(1, 0, 1, (GateAction("x", (2,)), GateAction("cx", (2, 1))))]
    assert width(2, flip) == 3 and width(2, [Trigger(2, 2, 1, flip[0].actions)]) == 2
    compiled = compile_dynamic(bell, flip, {})
    assert compiled.num_qubits == 3 and compiled.num_clbits == 2
    counts = AerSimulator().run(compiled, shots=4000, seed_simulator=3).result().get_counts()
    assert set(counts) == {"00", "01"}  # q0=1 flips q1 through q2 before it is measured
    assert chisquare([counts["00"], counts["01"]]).pvalue > 1e-3


def test_isolation_leaves_out_qubits_before_the_search_not_after(tmp_path):
    """With a neighbour of each of the best qubits taken, a spatially isolated pair of any
    shape is still found: the search's capped candidates (grown from the best free qubits)
    were vetoed one by one, and `any` was refused while `linear` found a pair."""
    from levels.config import load_config
    from levels.fabric import Fabric

    fabric = Fabric(tmp_path / "data", load_config())
    try:
        allocator, device = fabric.qubits.allocator, fabric.qubits.device("eagle")
        best = device.best_first[:12]
        taken = sorted({n for b in best for n in device.neighbors[b] if n not in best})
        for i, physical in enumerate(taken):
            allocator.allocate("eagle", ctl.Alloc(1, f"p{i}"), 0, physical=physical)
        pair = allocator.allocate("eagle", ctl.Alloc(2, "apart", "any", 0.0, "spatial"), 0)
        assert not {n for q in pair.qubits for n in device.neighbors[q]} & set(taken)
    finally:
        fabric.close()

