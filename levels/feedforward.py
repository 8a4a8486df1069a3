"""Feed-forward triggers: actions taken when a qubit is measured with a given outcome.

The reference's four actions: a gate (x q18), an adaptive sequence (h q2; cz q2 q0), a
parameter update (set theta=0.5) and early termination (stop). They run two ways:
- compiled into a dynamic circuit (mid-circuit measurement + if_test) that Aer executes per
  shot: gates become if_test blocks; `set` and `stop` change what follows, so the rest of
  the circuit is emitted in an if/else pair (with the new parameter values, or not at all);
- live: `measure qK` samples the task's state and dispatches the matching triggers on it at
  once, timing each dispatch for the feed-forward latency histogram.
Trigger qubits are the task's logical qubits.
"""

import dataclasses
import time
from typing import Any

from levels.ctl import Action, GateAction, SetAction, StopAction
from levels.errors import Invalid
from levels.livestate import LiveState


@dataclasses.dataclass(frozen=True)
class Trigger:
    id: int
    qubit: int  # logical qubit of the task
    outcome: int
    actions: tuple[Action, ...]
    prio: int = 0

    @property
    def branches(self) -> bool:
        """Whether it changes what follows (parameters or termination), not just gates."""
        return any(isinstance(a, SetAction | StopAction) for a in self.actions)

    def describe(self, physical: list[int]) -> str:
        parts = []
        for action in self.actions:
            if isinstance(action, GateAction):
                angles = f"({', '.join(f'{p:g}' for p in action.params)})" if action.params else ""
                parts.append(f"{action.name}{angles} " +
                             " ".join(f"q{physical[q]}" for q in action.qubits))
            elif isinstance(action, SetAction):
                parts.append(f"set {action.name}={action.value:g}")
            else:
                parts.append("stop")
        return (f"{self.id} q{physical[self.qubit]} on {self.outcome} do {'; '.join(parts)}"
                f" prio={self.prio}")

    def to_json(self) -> dict[str, Any]:
        actions = []
        for action in self.actions:
            if isinstance(action, GateAction):
                actions.append({"gate": action.name, "qubits": list(action.qubits),
                                "params": list(action.params)})
            elif isinstance(action, SetAction):
                actions.append({"set": action.name, "value": action.value})
            else:
                actions.append({"stop": True})
        return {"id": self.id, "qubit": self.qubit, "outcome": self.outcome, "prio": self.prio,
                "actions": actions}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Trigger":
        actions: list[Action] = []
        for a in data["actions"]:
            if "gate" in a:
                actions.append(GateAction(a["gate"], tuple(a["qubits"]), tuple(a["params"])))
            elif "set" in a:
                actions.append(SetAction(a["set"], a["value"]))
            else:
                actions.append(StopAction())
        return cls(data["id"], data["qubit"], data["outcome"], tuple(actions), data["prio"])


def by_priority(triggers: list[Trigger]) -> list[Trigger]:
    return sorted(triggers, key=lambda t: (-t.prio, t.id))


@dataclasses.dataclass
class Dispatch:
    """What a live measurement did: its outcome, the triggers run and how long they took."""

    outcome: int
    fired: list[int]
    latency_ns: int
    stopped: bool


def dispatch_live(
    state: LiveState, qubit: int, triggers: list[Trigger], parameters: dict[str, float],
) -> Dispatch:
    """Measure `qubit` and run the matching triggers on the state, timing the dispatch."""
    outcome = state.measure(qubit)
    started = time.perf_counter_ns()
    fired: list[int] = []
    stopped = False
    for trigger in by_priority(triggers):
        if trigger.qubit != qubit or trigger.outcome != outcome:
            continue
        fired.append(trigger.id)
        for action in trigger.actions:
            if isinstance(action, GateAction):
                state.apply_gate(action.name, action.qubits, action.params)
            elif isinstance(action, SetAction):
                parameters[action.name] = action.value
            else:
                stopped = True
        if stopped:
            break
    return Dispatch(outcome, fired, time.perf_counter_ns() - started, stopped)


def compile_dynamic(circuit, triggers: list[Trigger], parameters: dict[str, float]):
    """The circuit with the triggers of each measured qubit woven in as if_test blocks,
    and its parameters bound (a `set` trigger binds what follows it in its branch)."""
    from qiskit import QuantumCircuit

    out = QuantumCircuit(*circuit.qregs, *circuit.cregs)
    if len(out.qubits) != len(circuit.qubits) or len(out.clbits) != len(circuit.clbits):
        out = QuantumCircuit(circuit.num_qubits, circuit.num_clbits)
    qubit_of = {bit: i for i, bit in enumerate(circuit.qubits)}
    clbit_of = {bit: i for i, bit in enumerate(circuit.clbits)}
    on_qubit: dict[int, list[Trigger]] = {}
    for trigger in by_priority(triggers):
        on_qubit.setdefault(trigger.qubit, []).append(trigger)
    _emit(out, circuit.data, 0, dict(parameters), on_qubit, qubit_of, clbit_of)
    return out


def _emit(out, data, start, parameters, on_qubit, qubit_of, clbit_of) -> None:
    for index in range(start, len(data)):
        instruction = data[index]
        operation = _bound(instruction.operation, parameters)
        qubits = [out.qubits[qubit_of[q]] for q in instruction.qubits]
        clbits = [out.clbits[clbit_of[c]] for c in instruction.clbits]
        out.append(operation, qubits, clbits)
        if operation.name != "measure":
            continue
        triggers = on_qubit.get(qubit_of[instruction.qubits[0]], [])
        clbit = clbits[0]
        for trigger in triggers:
            if trigger.branches:
                continue
            with out.if_test((clbit, trigger.outcome)):
                _gates(out, trigger.actions)
        branching = [t for t in triggers if t.branches]
        if branching:
            _branch(out, data, index + 1, parameters, branching, clbit, on_qubit, qubit_of,
                    clbit_of)
            return


def _branch(out, data, start, parameters, branching, clbit, on_qubit, qubit_of, clbit_of):
    """The highest-priority branching trigger splits the rest of the circuit in two."""
    trigger, others = branching[0], branching[1:]
    with out.if_test((clbit, trigger.outcome)) as otherwise:
        _gates(out, trigger.actions)
        if not any(isinstance(a, StopAction) for a in trigger.actions):
            updated = dict(parameters)
            updated.update({a.name: a.value for a in trigger.actions
                            if isinstance(a, SetAction)})
            _emit(out, data, start, updated, on_qubit, qubit_of, clbit_of)
    with otherwise:
        remaining = [t for t in others if t.outcome != trigger.outcome]
        if remaining:
            _branch(out, data, start, parameters, remaining, clbit, on_qubit, qubit_of,
                    clbit_of)
        else:
            _emit(out, data, start, parameters, on_qubit, qubit_of, clbit_of)


def _gates(out, actions) -> None:
    from qiskit.circuit.library import get_standard_gate_name_mapping

    library = get_standard_gate_name_mapping()
    for action in actions:
        if not isinstance(action, GateAction):
            continue
        template = library.get(action.name)
        if template is None:
            raise Invalid(f"unknown gate {action.name!r} in a trigger")
        gate = template.base_class(*action.params) if action.params else template
        out.append(gate, [out.qubits[q] for q in action.qubits])


def _bound(operation, parameters: dict[str, float]):
    from qiskit.circuit import ParameterExpression

    if not any(isinstance(p, ParameterExpression) for p in operation.params):
        return operation
    values = []
    for param in operation.params:
        if isinstance(param, ParameterExpression):
            missing = [p.name for p in param.parameters if p.name not in parameters]
            if missing:
                raise Invalid(f"parameter {missing[0]} has no value (write `set "
                              f"{missing[0]}=VALUE` to the task's ctl)")
            param = float(param.bind({p: parameters[p.name] for p in param.parameters}))
        values.append(param)
    bound = operation.copy()
    bound.params = values
    return bound


