"""What is live on each task's qubits: its state vector (livestate.py), the measurements
and trigger firings of live shots, and what restore or migration put there. Not persisted:
a remount starts every task in |0...0>. Built on first use (a task that only runs never
holds a vector: 25+ qubits would not fit)."""

import dataclasses
import secrets
import time
from typing import Any

import numpy as np

from levels import ctl, native
from levels.circuits import CircuitStore
from levels.errors import Busy, Invalid
from levels.feedforward import compile_dynamic, dispatch_live
from levels.livestate import LiveState
from levels.metrics import Metrics
from levels.tasks import Task, TaskTable

MEASUREMENTS_KEPT = 20
HISTORY_KEPT = 64


@dataclasses.dataclass
class Live:
    state: LiveState
    measurements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped: bool = False
    last_run: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None  # the last restore: checkpoint and fidelity
    migrated: dict[str, Any] | None = None  # the last migration: whence, format, fidelity
    # Values `set` by triggers since the last reset: they last one live shot, as a `set`
    # in a compiled circuit lasts one shot, and never change the task's own parameters.
    parameters: dict[str, float] = dataclasses.field(default_factory=dict)
    seed: int | None = None  # of the live measurements' generator: a checkpoint's provenance
    # What made the live state since |0...0> or a load (apply C@vN, measure, restore), the
    # newest HISTORY_KEPT: a checkpoint's provenance.
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def load(self, vector: np.ndarray, origin: dict[str, Any]) -> None:
        """A new state from elsewhere (a checkpoint, another device): a fresh shot."""
        self.state.vector = vector.copy()
        self.stopped = False
        self.parameters.clear()
        self.history = [origin]

    def note(self, event: dict[str, Any]) -> None:
        self.history = [*self.history[1 - HISTORY_KEPT:], event]


class LiveTasks:
    def __init__(self, table: TaskTable, circuits: CircuitStore, metrics: Metrics) -> None:
        self._table = table
        self._circuits = circuits
        self._metrics = metrics
        self._live: dict[str, Live] = {}

    def get(self, name: str) -> Live:
        live = self._live.get(name)
        if live is None:
            seed = secrets.randbits(63)
            live = self._live[name] = Live(
                LiveState(len(self._table.get(name).qubits), np.random.default_rng(seed)),
                seed=seed)
        return live

    def peek(self, name: str) -> Live | None:
        """The task's live state if it has one (a read never builds one)."""
        return self._live.get(name)

    def drop(self, name: str) -> None:
        self._live.pop(name, None)

    def reset(self, name: str) -> str:
        live = self.get(name)
        live.state.reset()
        live.stopped = False  # the measurement history stays: it is a log
        live.parameters.clear()
        live.history = []
        return "reset to |0...0>"

    def set_parameter(self, task: Task, command: ctl.SetAction) -> str:
        self._table.save(dataclasses.replace(
            task, parameters={**task.parameters, command.name: command.value}))
        live = self._live.get(task.name)
        if live is not None:  # the latest statement holds, over a trigger's set
            live.parameters.pop(command.name, None)
        return f"set {command.name}={command.value!r}"

    def measure(self, task: Task, logical: int) -> str:
        if not 0 <= logical < len(task.qubits):
            raise Invalid(f"task {task.name} has logical qubits q0..q{len(task.qubits) - 1}")
        live = self.get(task.name)
        if live.stopped:
            raise Busy(f"task {task.name} was stopped by a trigger; write reset to start again")
        outcome = dispatch_live(live.state, logical, task.triggers, live.parameters)
        self._metrics.feedforward_latency_seconds.observe(outcome.latency_ns / 1e9)
        live.stopped = outcome.stopped
        record = {"qubit": logical, "physical": task.qubits[logical],
                  "outcome": outcome.outcome, "triggers": outcome.fired,
                  "latency_ns": outcome.latency_ns, "stopped": outcome.stopped}
        live.measurements = [*live.measurements[1 - MEASUREMENTS_KEPT:], record]
        live.note({"measure": f"q{logical}", "outcome": outcome.outcome})
        fired = f" triggers {','.join(map(str, outcome.fired))}" if outcome.fired else ""
        return f"q{logical}={outcome.outcome}{fired}"

    async def apply(self, task: Task, command: ctl.Apply) -> str:
        circuit = self._circuits.circuit(command.circuit, command.version)
        if circuit.num_qubits > len(task.qubits):
            raise Invalid(f"{command.circuit} needs {circuit.num_qubits} qubits; task "
                          f"{task.name} has {len(task.qubits)}")
        parameters = {**task.parameters, **self.get(task.name).parameters}
        await self.apply_circuit(task.name, compile_dynamic(circuit, [], parameters))
        latest = self._circuits.get(command.circuit).latest
        version = command.version or (latest.n if latest else 0)
        self.get(task.name).note({"apply": f"{command.circuit}@v{version}"})
        return f"applied {command.circuit}"

    async def apply_circuit(self, name: str, circuit) -> None:
        """Evolve the task's live state by a unitary circuit, all or nothing (a thread)."""
        live = self.get(name)
        if live.stopped:
            raise Busy(f"task {name} was stopped by a trigger; write reset to start again")
        state = live.state
        start = state.vector.copy()  # here, not in the thread: a measure mutates in place

        def evolve():
            started = time.perf_counter()
            trial = LiveState(state.num_qubits, state.rng)
            trial.vector = start
            trial.evolve(circuit)
            self._metrics.gate_operation_seconds.observe(time.perf_counter() - started)
            return trial.vector

        state.vector = await native.run_sync(evolve)
