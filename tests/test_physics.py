"""Physics through the mount, checked against qiskit.quantum_info: both feed-forward paths
follow the documented trigger order, and reported fidelities are those of the state that is
actually live."""

import errno
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import QuantumCircuit
from scipy.stats import chisquare

from tests.test_execution import last_result
from tests.test_qubits import command, mapping, refused

pytestmark = pytest.mark.fuse

A, B = 1.1, 2.2  # the preparation: ry(A) q0, ry(B) q1
HEADER = 'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] theta;\nqubit[3] q;\n'
FULL = HEADER + f"""bit[3] c;
ry({A}) q[0];
ry({B}) q[1];
c[0] = measure q[0];
rx(theta) q[1];
c[1] = measure q[1];
ry(theta) q[2];
c[2] = measure q[2];
"""
PIECES = {"prep": HEADER + f"ry({A}) q[0];\nry({B}) q[1];\n",
          "mid": HEADER + "rx(theta) q[1];\n", "tail": HEADER + "ry(theta) q[2];\n"}
# FULL, step by step: gates with the current theta, and measurements.
STEPS = (("measure", 0), ("rx", 1), ("measure", 1), ("ry", 2), ("measure", 2))

angle = st.floats(0, 2 * np.pi, allow_nan=False)
gate = st.one_of(
    st.tuples(st.sampled_from(["x", "h", "s"]), st.tuples(st.integers(0, 2)), st.just(())),
    st.tuples(st.just("rx"), st.tuples(st.integers(0, 2)), st.tuples(angle)),
    st.tuples(st.just("cx"), st.lists(st.integers(0, 2), min_size=2, max_size=2,
                                      unique=True).map(tuple), st.just(())),
)
action = st.one_of(gate, st.tuples(st.just("set"), st.just(()), st.tuples(angle)),
                   st.tuples(st.just("stop"), st.just(()), st.just(())))
trigger = st.tuples(st.integers(0, 1), st.integers(0, 1), st.lists(action, min_size=1,
                                                                   max_size=3),
                    st.integers(0, 2))  # (measured qubit, outcome, actions, prio)


def evolve(state: np.ndarray, name: str, qubits, params) -> np.ndarray:
    from qiskit.quantum_info import Statevector

    circuit = QuantumCircuit(3)
    getattr(circuit, name)(*params, *qubits)
    return np.asarray(Statevector(state).evolve(circuit).data)


def collapse(state: np.ndarray, qubit: int, outcome: int) -> tuple[float, np.ndarray]:
    keep = ((np.arange(state.size) >> qubit) & 1) == outcome
    projected = np.where(keep, state, 0)
    p = float(np.vdot(projected, projected).real)
    return p, projected / np.sqrt(p) if p > 1e-15 else projected


def fired(triggers, qubit: int, outcome: int):
    """The documented order: highest prio first, ties in registration order, actions as
    written, nothing after the first stop. Returns (trigger indices, actions, stopped)."""
    order = sorted((i for i, t in enumerate(triggers) if t[:2] == (qubit, outcome)),
                   key=lambda i: (-triggers[i][3], i))
    started, actions = [], []
    for i in order:
        started.append(i)
        for a in triggers[i][2]:
            actions.append(a)
            if a[0] == "stop":
                return started, actions, True
    return started, actions, False


def after_measurement(state, theta, triggers, qubit, outcome):
    """Probability of the outcome, and the state, theta and stop after its triggers."""
    p, state = collapse(state, qubit, outcome)
    _, actions, stopped = fired(triggers, qubit, outcome)
    for name, qubits, params in actions:
        if name == "set":
            theta = params[0]
        elif name != "stop":
            state = evolve(state, name, qubits, params)
    return p, state, theta, stopped


def prepared() -> np.ndarray:
    state = np.zeros(8, dtype=complex)
    state[0] = 1
    return evolve(evolve(state, "ry", (0,), (A,)), "ry", (1,), (B,))


def exact_counts(triggers, theta0) -> dict[str, float]:
    """The exact distribution of FULL's bits (c2 c1 c0) under the documented semantics."""
    distribution: dict[str, float] = {}

    def walk(step, state, theta, bits, weight):
        if step == len(STEPS):
            key = "".join(str(b) for b in reversed(bits))
            distribution[key] = distribution.get(key, 0) + weight
            return
        name, qubit = STEPS[step]
        if name != "measure":
            walk(step + 1, evolve(state, name, (qubit,), (theta,)), theta, bits, weight)
            return
        for outcome in (0, 1):
            p, after, new_theta, stopped = after_measurement(state, theta, triggers, qubit,
                                                             outcome)
            if p < 1e-15:
                continue
            marked = bits.copy()
            marked[qubit] = outcome
            if stopped:
                walk(len(STEPS), after, new_theta, marked, weight * p)
            else:
                walk(step + 1, after, new_theta, marked, weight * p)

    walk(0, prepared(), theta0, [0, 0, 0], 1.0)
    return distribution


def action_text(action, physical) -> str:
    name, qubits, params = action
    if name == "set":
        return f"set theta={params[0]!r}"
    if name == "stop":
        return "stop"
    angles = f"({params[0]!r})" if params else ""
    return f"{name}{angles} " + " ".join(f"q{physical[q]}" for q in qubits)


def live_probabilities(qfs, task: str) -> np.ndarray:
    state = json.loads((qfs.qubits / "tasks" / task / "state.json").read_text())
    probabilities = np.zeros(8)
    for bits, p in state["live"]["top_probabilities"].items():
        probabilities[int(bits, 2)] = p
    return probabilities


@pytest.fixture
def trigger_task(qfs):
    qfs.write_circuit("full", FULL)
    for name, source in PIECES.items():
        qfs.write_circuit(name, source)
    command(qfs.qubits / "ctl", "alloc 3 task=ff topology=linear")
    return qfs, mapping(qfs, "ff")


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(triggers=st.lists(trigger, min_size=1, max_size=4), theta0=angle)
def test_both_trigger_paths_give_the_exact_distribution(trigger_task, triggers, theta0):
    qfs, physical = trigger_task
    ctl = qfs.qubits / "tasks" / "ff" / "ctl"
    for qubit in (0, 1):
        command(qfs.qubits / f"q{physical[qubit]}" / "ctl", "off all")
    command(ctl, f"set theta={theta0!r}")
    for qubit, outcome, actions, prio in triggers:
        command(qfs.qubits / f"q{physical[qubit]}" / "ctl",
                f"on {outcome} do {'; '.join(action_text(a, physical) for a in actions)} "
                f"prio={prio}")
    ids = [int(line.split()[0]) for line in
           (qfs.qubits / "tasks" / "ff" / "triggers").read_text().splitlines()]
    expected = exact_counts(triggers, theta0)

    # The circuit path: counts against the exact distribution.
    command(ctl, "run full shots=3000 noise=off seed=7")
    counts = last_result(qfs, "full")["counts"]
    possible = {k: p for k, p in expected.items() if p > 1e-9}
    assert set(counts) <= set(possible), (counts, expected)
    keys = sorted(possible)
    if len(keys) > 1:
        total = sum(possible.values())
        assert chisquare([counts.get(k, 0) for k in keys],
                         [possible[k] / total * 3000 for k in keys]).pvalue > 1e-4, \
            (counts, expected)

    # The live path: after every step the live state's probabilities are the exact ones,
    # and each measurement fires the expected triggers in the expected order.
    for _ in range(3):
        command(ctl, "reset")
        command(ctl, "apply prep")
        state, theta = prepared(), theta0
        for step, (name, qubit) in enumerate(STEPS):
            if name != "measure":
                command(ctl, "apply mid" if step == 1 else "apply tail")
                state = evolve(state, name, (qubit,), (theta,))
            else:
                command(ctl, f"measure q{qubit}")
                reply = re.fullmatch(r"ok: q\d=([01])(?: triggers ([0-9,]+))?\n",
                                     ctl.read_text())
                assert reply, ctl.read_text()
                outcome = int(reply.group(1))
                order, _, stopped = fired(triggers, qubit, outcome)
                assert (reply.group(2) or "") == ",".join(str(ids[i]) for i in order)
                _, state, theta, stopped = after_measurement(state, theta, triggers, qubit,
                                                             outcome)
            assert live_probabilities(qfs, "ff") == pytest.approx(abs(state) ** 2, abs=1e-9)
            if name == "measure" and stopped:
                assert refused(ctl, "apply mid") == errno.EBUSY
                break


DENSE = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
ry(0.9) q[0];
h q[1];
cx q[0], q[2];
rz(0.4) q[2];
cx q[1], q[0];
ry(1.3) q[2];
t q[1];
"""
DEVICES = """live_qubit_mgr:
  devices:
    - {name: eagle, qubits: 127, topology: heavy_hex}
    - {name: lab, qubits: 8, topology: all_to_all, seed: 11}
"""


def original():
    from qiskit import qasm3
    from qiskit.quantum_info import Statevector

    return Statevector(qasm3.loads(DENSE))


def live_vector(qfs, ctl, name: str) -> np.ndarray:
    """The task's live state, read back through a lossless checkpoint."""
    command(ctl, f"checkpoint {name} format=statevector")
    return np.load(qfs.root / "states" / name / "statevector.npy")


@pytest.mark.parametrize("fmt", ["shadow", "statevector"])
def test_restore_reports_the_fidelity_of_the_state_it_loads(qfs, fmt):
    from qiskit.quantum_info import DensityMatrix, Statevector, state_fidelity

    qfs.write_circuit("dense", DENSE)
    command(qfs.qubits / "ctl", "alloc 3 task=a")
    command(qfs.qubits / "tasks" / "a" / "ctl", "apply dense")
    command(qfs.qubits / "tasks" / "a" / "ctl", f"checkpoint s format={fmt}")
    command(qfs.qubits / "ctl", "alloc 3 task=b")
    ctl = qfs.qubits / "tasks" / "b" / "ctl"
    command(ctl, "restore s")
    reply = ctl.read_text()
    restored = json.loads((qfs.qubits / "tasks" / "b" / "state.json").read_text())["live"][
        "restored"]
    loaded = Statevector(live_vector(qfs, ctl, "loaded"))
    meta = json.loads((qfs.root / "states" / "s" / "meta.json").read_text())
    kind = meta["decodes_to"]
    stored = np.load(qfs.root / "states" / "s" / f"{kind}.npy")
    stored = DensityMatrix(stored) if stored.ndim == 2 else Statevector(stored)
    assert restored["fidelity"] == pytest.approx(state_fidelity(stored, loaded), abs=1e-9)
    assert f"fidelity {restored['fidelity']:.12g} to the checkpoint's" in reply
    assert restored["checkpoint_fidelity"] == pytest.approx(
        state_fidelity(original(), stored), abs=1e-9)
    actual = state_fidelity(original(), loaded)
    assert restored["fidelity_to_checkpointed_at_least"] <= actual + 1e-9
    if fmt == "statevector":  # the loaded state is the decoded one: the bound is exact
        assert restored["fidelity_to_checkpointed_at_least"] == pytest.approx(actual, abs=1e-9)
    else:
        # A shadow's top eigenvector is as faithful to it as its largest eigenvalue: below 1,
        # unless the projection onto a density matrix left a pure state (1 seed in ~400).
        top = float(np.linalg.eigvalsh(stored.data)[-1])
        assert restored["fidelity"] == pytest.approx(top, abs=1e-9)


def test_migration_reports_and_checks_the_fidelity_of_the_state_it_loads(mount_factory,
                                                                          tmp_path):
    from qiskit.quantum_info import Statevector, state_fidelity

    config = tmp_path / "qfs.yaml"
    config.write_text(DEVICES)
    qfs = mount_factory(extra=["--config", str(config)])
    qfs.write_circuit("dense", DENSE)
    for task in ("a", "c"):
        command(qfs.qubits / "ctl", f"alloc 3 task={task}")
        command(qfs.qubits / "tasks" / task / "ctl", "apply dense")
    lab = qfs.root / "devices" / "lab" / "tasks"
    command(qfs.qubits / "tasks" / "a" / "ctl", "migrate device=lab format=shadow threshold=0")
    migrated = json.loads((lab / "a" / "state.json").read_text())["live"]["migrated"]
    assert migrated["from"] == "eagle" and migrated["format"] == "shadow"
    reported = migrated["fidelity"]
    loaded = Statevector(live_vector(qfs, lab / "a" / "ctl", "moved"))
    assert reported == pytest.approx(state_fidelity(original(), loaded), abs=1e-9)
    command(lab / "a" / "ctl", "release")
    # The same state gets the same shadow, so the decision at a threshold is reproducible.
    before = mapping(qfs, "c")
    ctl = qfs.qubits / "tasks" / "c" / "ctl"
    assert refused(ctl, f"migrate device=lab format=shadow threshold={reported + 1e-9}") == \
        errno.EINVAL
    assert f"fidelity {reported:.6f} < threshold" in ctl.read_text()
    assert mapping(qfs, "c") == before
    command(ctl, f"migrate device=lab format=shadow threshold={reported - 1e-9}")
    assert json.loads((lab / "c" / "state.json").read_text())["live"]["migrated"][
        "fidelity"] == reported


# (task qubits, preparation (OpenQASM 2 body), triggers on q0 outcome 1 as (gate, logical
# qubits)): q0 is |1> after the preparation, so `measure q0` gives 1 and fires them all.
# Each gate acts on every qubit of its task, which the live path once indexed to a copy.
WHOLE_TASK_TRIGGERS = {
    "one": (1, "x q[0];\n", [("h", (0,)), ("s", (0,))]),
    "two": (2, "x q[0];\nry(0.7) q[1];\n", [("cx", (1, 0))]),
    "three": (3, "x q[0];\nry(0.7) q[1];\nh q[2];\n", [("ccx", (1, 2, 0))]),
}


def test_live_triggers_acting_on_every_task_qubit(qfs):
    """A trigger gate on all of its task's qubits changes the live state as Qiskit says."""
    from qiskit.quantum_info import Statevector, state_fidelity

    for task, (n, prep, gates) in WHOLE_TASK_TRIGGERS.items():
        qfs.write_circuit(f"prep_{task}", f'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
                                          f"qreg q[{n}];\n{prep}")
        command(qfs.qubits / "ctl", f"alloc {n} task={task}")
        physical = mapping(qfs, task)
        for name, qubits in gates:
            command(qfs.qubits / f"q{physical[0]}" / "ctl",
                    f"on 1 do {name} " + " ".join(f"q{physical[q]}" for q in qubits))
        ctl = qfs.qubits / "tasks" / task / "ctl"
        command(ctl, f"apply prep_{task}")
        command(ctl, "measure q0")
        fired = ",".join(str(i + 1) for i in range(len(gates)))
        assert ctl.read_text() == f"ok: q0=1 triggers {fired}\n"
        expected = QuantumCircuit.from_qasm_str(
            f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{n}];\n{prep}')
        for name, qubits in gates:  # q0 is |1>: measuring it changes nothing
            getattr(expected, name)(*qubits)
        live = Statevector(live_vector(qfs, ctl, f"live_{task}"))
        assert state_fidelity(live, Statevector(expected)) >= 1 - 1e-9, task


def test_counts_of_a_program_with_a_bit_outside_its_registers_are_whole(qfs):
    """`bit m;` beside `bit[1] c;`: counts are keyed by every clbit (clbit 0 rightmost,
    declaration order), sum to the shots, and follow the exact distribution; Qiskit's
    counts by register misread them and merged shots."""
    qfs.write_circuit("loose", 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
                      "bit m;\nbit[1] c;\nh q[0];\nm = measure q[0];\nx q[1];\n"
                      "c[0] = measure q[1];\n")
    command(qfs.qubits / "ctl", "alloc 2 task=lb topology=linear")
    command(qfs.qubits / "tasks" / "lb" / "ctl", "run loose shots=2000 noise=off seed=3")
    counts = last_result(qfs, "loose")["counts"]
    assert set(counts) == {"10", "11"} and sum(counts.values()) == 2000, counts
    assert chisquare([counts["10"], counts["11"]], [1000, 1000]).pvalue > 1e-4



def test_a_gate_the_program_defines_takes_the_parameter_the_task_sets(qfs):
    """`gate foo(a) x { rx(a) x; } ... foo(theta)` with theta from `set`: the value reaches
    the gate's definition (it was EIO: the definition kept the unbound parameter)."""
    qfs.write_circuit("custom", 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
                      "input float[64] theta;\ngate foo(a) x { rx(a) x; }\nqubit[1] q;\n"
                      "bit[1] c;\nfoo(theta) q[0];\nc[0] = measure q[0];\n")
    command(qfs.qubits / "ctl", "alloc 1 task=cg")
    ctl = qfs.qubits / "tasks" / "cg" / "ctl"
    command(ctl, "set theta=1.1")
    command(ctl, "run custom shots=4000 noise=off seed=5")
    counts = last_result(qfs, "custom")["counts"]
    one = np.sin(1.1 / 2) ** 2
    assert chisquare([counts.get("0", 0), counts.get("1", 0)],
                     [4000 * (1 - one), 4000 * one]).pvalue > 1e-4, counts
