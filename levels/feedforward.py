"""Feed-forward triggers: actions taken when a qubit is measured with a given outcome.

The reference's four actions: a gate (x q18), an adaptive sequence (h q2; cz q2 q0), a
parameter update (set theta=0.5) and early termination (stop). One order for both paths:
a measurement giving outcome o runs the triggers on that qubit and outcome highest `prio`
first, ties in registration order, each trigger's actions as written, up to the first
`stop`; a `set` binds what follows (so of two sets of one name the later one holds) and
lasts one shot. The two paths:
- compiled into a dynamic circuit (mid-circuit measurement + if_test) that Aer executes per
  shot: gates become if_test blocks; where a `set` changes a parameter that a later gate
  uses, the rest of the circuit is emitted once per outcome (with that outcome's values);
  after a `stop` the rest is not emitted in that outcome's branch;
- live: `measure qK` samples the task's state and runs the same actions on it at once,
  timing each dispatch for the feed-forward latency histogram; a `set` lasts until `reset`.
Trigger qubits are the task's logical qubits.
"""

import dataclasses
import time
from typing import Any

from levels.ctl import Action, GateAction, SetAction, StopAction
from levels.errors import Invalid
from levels.livestate import LiveState

# Bounds of the compiled dynamic circuit: each measurement whose triggers change a
# parameter used later copies the rest of the circuit, which can double per measurement,
# and transpiling operations inside branches costs about 2 ms each.
MAX_ADDED_OPERATIONS = 4_000
MAX_NESTED_BRANCHES = 64


@dataclasses.dataclass(frozen=True)
class Trigger:
    id: int
    qubit: int  # logical qubit of the task
    outcome: int
    actions: tuple[Action, ...]
    prio: int = 0

    def describe(self, physical: list[int]) -> str:
        parts = []
        for action in self.actions:
            if isinstance(action, GateAction):
                angles = f"({', '.join(repr(p) for p in action.params)})" \
                    if action.params else ""
                parts.append(f"{action.name}{angles} " +
                             " ".join(f"q{physical[q]}" for q in action.qubits))
            elif isinstance(action, SetAction):
                parts.append(f"set {action.name}={action.value!r}")
            else:
                parts.append("stop")
        return (f"{self.id} q{physical[self.qubit]} on {self.outcome} do {'; '.join(parts)}"
                f" prio={self.prio}")

    def to_json(self) -> dict[str, Any]:
        actions: list[dict[str, Any]] = []
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


@dataclasses.dataclass
class Fired:
    """What one measurement outcome runs: the triggers, their actions in order, and whether
    a stop ended them."""

    triggers: list[int]
    actions: list[Action]
    stopped: bool


def fired(triggers: list[Trigger], qubit: int, outcome: int) -> Fired:
    """The one trigger order of both paths: highest prio first, ties in registration order,
    each trigger's actions as written, nothing after the first stop."""
    result = Fired([], [], False)
    matching = [t for t in triggers if t.qubit == qubit and t.outcome == outcome]
    if len(matching) > 1:  # sorting only what fires: a live dispatch is timed
        matching.sort(key=lambda t: (-t.prio, t.id))
    for trigger in matching:
        result.triggers.append(trigger.id)
        for action in trigger.actions:
            result.actions.append(action)
            if isinstance(action, StopAction):
                result.stopped = True
                return result
    return result


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
    """Measure `qubit` and run the matching triggers on the state, timing the dispatch;
    `set` actions go into `parameters`."""
    outcome = state.measure(qubit)
    started = time.perf_counter_ns()
    run = fired(triggers, qubit, outcome)
    for action in run.actions:
        if isinstance(action, GateAction):
            state.apply_gate(action.name, action.qubits, action.params)
        elif isinstance(action, SetAction):
            parameters[action.name] = action.value
    return Dispatch(outcome, run.triggers, time.perf_counter_ns() - started, run.stopped)


def width(num_qubits: int, triggers: list[Trigger]) -> int:
    """How many of the task's qubits a run of a circuit on `num_qubits` needs: those, and
    every qubit acted on by a trigger its measurements can fire (one the circuit may leave
    idle, which a run must then include)."""
    return max([num_qubits] + [
        q + 1 for t in triggers if t.qubit < num_qubits
        for a in t.actions if isinstance(a, GateAction) for q in a.qubits])


def widened(circuit, triggers: list[Trigger]):
    """The circuit over `width` qubits (the idle ones added after its own)."""
    from qiskit.circuit import Qubit

    extra = width(circuit.num_qubits, triggers) - circuit.num_qubits
    if not extra:
        return circuit
    wide = circuit.copy()
    wide.add_bits([Qubit() for _ in range(extra)])
    return wide


def compile_dynamic(circuit, triggers: list[Trigger], parameters: dict[str, float]):
    """The circuit, widened to the qubits its triggers act on, with the triggers of each
    measured qubit woven in as if_test blocks and its parameters bound (a `set` trigger
    binds what follows it in its branch)."""
    from qiskit import QuantumCircuit

    circuit = widened(circuit, triggers)
    out = QuantumCircuit(list(circuit.qubits), list(circuit.clbits), *circuit.qregs,
                         *circuit.cregs)
    _Compiler(circuit, triggers, out).emit(0, dict(parameters))
    return out


class _Compiler:
    def __init__(self, circuit, triggers: list[Trigger], out) -> None:
        self.data = circuit.data
        self.index_of = {bit: i for i, bit in enumerate(circuit.qubits)}
        self.triggers = triggers
        self.out = out
        # Parameter names used by instruction i or later: a `set` of a name not among
        # them changes nothing and must not split the circuit.
        self.used_after = [frozenset[str]()] * (len(self.data) + 1)
        for i in range(len(self.data) - 1, -1, -1):
            self.used_after[i] = self.used_after[i + 1] | _names(self.data[i].operation)
        self.limit = len(self.data) + MAX_ADDED_OPERATIONS
        self.size = 0
        self.depth = 0

    def count(self) -> None:
        self.size += 1
        if self.size > self.limit:
            raise Invalid(
                f"feed-forward would compile this circuit into more than {self.limit} "
                f"operations (its own {len(self.data)} + {MAX_ADDED_OPERATIONS}): each "
                "measurement whose triggers `set` a parameter used later copies the rest of "
                "the circuit once per outcome; use fewer such triggers or measurements")

    def emit(self, start: int, parameters: dict[str, float]) -> None:
        for index in range(start, len(self.data)):
            instruction = self.data[index]
            self.count()
            self.out.append(_bound(instruction.operation, parameters), instruction.qubits,
                            instruction.clbits)
            if instruction.operation.name != "measure":
                continue
            qubit = self.index_of[instruction.qubits[0]]
            outcomes = [fired(self.triggers, qubit, o) for o in (0, 1)]
            if not any(f.actions for f in outcomes):
                continue
            later = self.used_after[index + 1]
            values = [_after(parameters, f.actions) for f in outcomes]
            splits = any(f.stopped for f in outcomes) or any(
                _restricted(v, later) != _restricted(parameters, later) for v in values)
            clbit = instruction.clbits[0]
            if not splits:
                self.branch(clbit, outcomes, None)
                continue
            self.depth += 1
            if self.depth > MAX_NESTED_BRANCHES:
                raise Invalid(f"feed-forward would nest more than {MAX_NESTED_BRANCHES} "
                              "branches (measurements whose triggers stop or set a "
                              "parameter used later)")
            self.branch(clbit, outcomes, (index + 1, values))
            self.depth -= 1
            return

    def branch(self, clbit, outcomes: list[Fired], rest) -> None:
        """One if/else on the measured bit: each outcome's gates, then, when `rest` is
        (start, values per outcome), the rest of the circuit unless that outcome stopped."""

        def body(outcome: int):
            gates = [a for a in outcomes[outcome].actions if isinstance(a, GateAction)]
            goes_on = rest is not None and not outcomes[outcome].stopped
            if not gates and not goes_on:
                return None

            def emit() -> None:
                for action in gates:
                    self.gate(action)
                if goes_on:
                    self.emit(rest[0], rest[1][outcome])

            return emit

        bodies = [body(0), body(1)]
        present = [o for o in (1, 0) if bodies[o] is not None]
        if not present:
            return
        self.count()
        with self.out.if_test((clbit, present[0])) as otherwise:
            bodies[present[0]]()
        if len(present) == 2:
            with otherwise:
                bodies[present[1]]()

    def gate(self, action: GateAction) -> None:
        from qiskit.circuit.library import get_standard_gate_name_mapping

        template = get_standard_gate_name_mapping().get(action.name)
        if template is None:
            raise Invalid(f"unknown gate {action.name!r} in a trigger")
        self.count()
        gate = template.base_class(*action.params) if action.params else template
        self.out.append(gate, [self.out.qubits[q] for q in action.qubits])


def _after(parameters: dict[str, float], actions: list[Action]) -> dict[str, float]:
    values = dict(parameters)
    values.update((a.name, a.value) for a in actions if isinstance(a, SetAction))
    return values


def _restricted(values: dict[str, float], names: frozenset[str]) -> dict[str, float]:
    return {k: v for k, v in values.items() if k in names}


def _names(operation) -> frozenset[str]:
    """The parameter names an operation (or the blocks of a control-flow op) uses."""
    from qiskit.circuit import ControlFlowOp, ParameterExpression

    if isinstance(operation, ControlFlowOp):
        return frozenset(p.name for block in operation.blocks for p in block.parameters)
    return frozenset(p.name for param in operation.params
                     if isinstance(param, ParameterExpression) for p in param.parameters)


def _bound(operation, parameters: dict[str, float]):
    from qiskit.circuit import ControlFlowOp, ParameterExpression

    names = _names(operation)
    if not names:
        return operation
    missing = sorted(names - parameters.keys())
    if missing:
        raise Invalid(f"parameter {missing[0]} has no value (write `set {missing[0]}=VALUE` "
                      "to the task's ctl)")
    if isinstance(operation, ControlFlowOp):
        return operation.replace_blocks([
            block.assign_parameters({p: parameters[p.name] for p in block.parameters})
            for block in operation.blocks])
    # Bound through a circuit, as Qiskit binds: a gate the program defines (`gate foo(a)
    # ...; foo(theta)`) carries theta into its definition too, which params alone miss.
    from qiskit import QuantumCircuit

    holder = QuantumCircuit(operation.num_qubits, operation.num_clbits)
    holder.append(operation, holder.qubits, holder.clbits)
    holder.assign_parameters({p: parameters[p.name] for p in holder.parameters}, inplace=True)
    bound = holder.data[0].operation
    bound.params = [float(p) if isinstance(p, ParameterExpression) else p
                    for p in bound.params]
    return bound
