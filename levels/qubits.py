"""Level 1, LiveQubitManager: allocation of physical qubits to tasks, their live state,
feed-forward triggers and execution on Aer with the device's noise.

Allocations and triggers persist in the metadata store (table `tasks`); live states do not
(a remount starts every task in |0...0>, as a power cycle would). Every command either
completes or changes nothing: it is validated fully before the first mutation.

Isolation: `spatial` reserves every neighbour of a task's qubits as a buffer (and refuses
candidates that touch another task's qubits); `temporal` keeps released qubits cooling for
`temporal_cooldown_ms` before another task may take them; `strict` is both.
"""

import dataclasses
import json
import math
import secrets
import threading
import time
from typing import Any

import trio

from levels import allocation, ctl, execution, feedforward, native
from levels.circuits import CircuitStore, validate_name
from levels.config import LiveQubitConfig
from levels.devices import Device, DeviceSpec
from levels.errors import Busy, Disabled, Invalid, NoSpace, NotFound, PermissionDenied
from levels.feedforward import Trigger, compile_dynamic, dispatch_live
from levels.livestate import LiveState, gate_matrix
from levels.metrics import Metrics
from levels.stateformats import fidelity, pure_state_of
from levels.states import Request, StateStore, owner_of
from levels.store.meta import MetaStore
from levels.workers import WorkerPool

ISOLATION_ALIASES = {"spatial_temporal": "strict"}


@dataclasses.dataclass
class Task:
    name: str
    device: str
    owner: int
    qubits: list[int]  # logical i -> physical qubits[i]
    buffers: list[int]
    topology: str
    isolate: str
    score: float
    created_ns: int
    triggers: list[Trigger] = dataclasses.field(default_factory=list)
    next_trigger: int = 1
    parameters: dict[str, float] = dataclasses.field(default_factory=dict)
    last_run: str = ""  # "<circuit>/<run>.json": result.json after a remount

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["triggers"] = [t.to_json() for t in self.triggers]
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Task":
        data = json.loads(raw)
        data["triggers"] = [Trigger.from_json(t) for t in data["triggers"]]
        return cls(**data)

    def logical(self, physical: int) -> int:
        try:
            return self.qubits.index(physical)
        except ValueError:
            raise Invalid(f"q{physical} is not allocated to task {self.name}") from None


@dataclasses.dataclass
class Live:
    """What is live on a task's qubits now (not persisted)."""

    state: LiveState
    measurements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped: bool = False
    last_run: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None  # the last restore: checkpoint and fidelity
    migrated: dict[str, Any] | None = None  # the last migration: whence, format, fidelity
    # Values `set` by triggers since the last reset: they last one live shot, as a `set`
    # in a compiled circuit lasts one shot, and never change the task's own parameters.
    parameters: dict[str, float] = dataclasses.field(default_factory=dict)


class LiveQubitManager:
    def __init__(
        self, meta: MetaStore, circuits: CircuitStore, states: StateStore,
        config: LiveQubitConfig, metrics: Metrics, workers: WorkerPool,
    ) -> None:
        self._meta = meta
        self._circuits = circuits
        self._states = states
        self._config = config
        self._metrics = metrics
        self.specs = [DeviceSpec(d.name, d.qubits, d.topology, d.seed) for d in config.devices]
        self.default_device = self.specs[0].name
        self._devices: dict[str, Device] = {}
        self._device_lock = threading.Lock()
        self._workers = workers
        self._calibrations: dict[tuple[str, tuple[int, ...]], execution.Calibration] = {}
        self.tasks: dict[str, Task] = {}
        with meta.reading() as txn:
            for _key, raw in txn.scan("tasks"):
                task = Task.from_json(raw)
                self.tasks[task.name] = task
        self._live: dict[str, Live] = {}
        self._cooling: dict[tuple[str, int], tuple[float, str]] = {}
        self._runs = 0

    # -- devices -------------------------------------------------------------------------

    def device_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def device(self, name: str) -> Device:
        """The device model, built on first use (GenericBackendV2 takes ~0.5 s)."""
        with self._device_lock:
            if name not in self._devices:
                spec = next((s for s in self.specs if s.name == name), None)
                if spec is None:
                    raise NotFound(f"no device {name}")
                self._devices[name] = Device(spec)
            return self._devices[name]

    def num_qubits(self, device: str) -> int:
        spec = next((s for s in self.specs if s.name == device), None)
        if spec is None:
            raise NotFound(f"no device {device}")
        return spec.qubits

    # -- who holds what ------------------------------------------------------------------

    def reservations(self, device: str) -> dict[int, tuple[str, str]]:
        """Physical qubit -> (task, "allocated" | "buffer" | "cooling")."""
        held: dict[int, tuple[str, str]] = {}
        now = time.monotonic()
        for (dev, q), (until, task) in list(self._cooling.items()):
            if until <= now:
                del self._cooling[(dev, q)]
            elif dev == device:
                held[q] = (task, "cooling")
        for task in self.tasks.values():
            if task.device != device:
                continue
            for q in task.buffers:
                held.setdefault(q, (task.name, "buffer"))
            for q in task.qubits:
                held[q] = (task.name, "allocated")
        return held

    def status(self, device: str, q: int) -> str:
        task, role = self.reservations(device).get(q, ("", "free"))
        if role == "free":
            return "free"
        if role == "allocated":
            index = self.tasks[task].qubits.index(q)
            return f"allocated to {task} (logical q{index})"
        if role == "buffer":
            return f"isolated (buffer of {task})"
        return f"cooling (released by {task})"

    def tasks_on(self, device: str) -> list[str]:
        return sorted(t.name for t in self.tasks.values() if t.device == device)

    def task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotFound(f"no task {name}") from None

    # -- allocation ----------------------------------------------------------------------

    def allocate(self, device_name: str, command: ctl.Alloc, uid: int,
                 physical: int | None = None) -> Task:
        """Allocate `command.count` qubits (or the one `physical` qubit) to a task.

        Chosen from the tasks as stored and recorded in the same write transaction: write
        transactions take turns on every host sharing the metadata store (levels/store/
        pg.py), so two hosts never give one qubit to two tasks."""
        started = time.perf_counter()
        validate_name(command.task, "task name")
        device = self.device(device_name)
        isolate = self._isolation(command.isolate)
        with self._meta.writing() as txn:
            self.tasks = {k.decode(): Task.from_json(v) for k, v in txn.scan("tasks")}
            task = self._allocation(device, command, uid, physical, isolate)
            txn.put("tasks", task.name.encode(), task.to_json())
        self.tasks[task.name] = task
        self._live.pop(task.name, None)  # the register changed: start it afresh
        self._metrics.qubit_allocation_seconds.observe(time.perf_counter() - started)
        self._update_utilization(device_name)
        return task

    def _allocation(self, device: Device, command: ctl.Alloc, uid: int, physical: int | None,
                    isolate: str) -> Task:
        device_name = device.name
        existing = self.tasks.get(command.task)
        if existing is not None:
            self._check_owner(existing, uid)
            if physical is None:
                raise Busy(f"task {command.task} already holds qubits; release it first")
            if existing.device != device_name:
                raise Busy(f"task {command.task} lives on device {existing.device}")
        held = self.reservations(device_name)
        if physical is not None:
            qubits, value = self._take_one(device, held, physical)
        else:
            qubits, value = self._choose(device, held, command, isolate)
        if value < command.noise:
            raise NoSpace(f"best {command.topology} set scores {value:.4f} < noise="
                          f"{command.noise} (score: geometric mean of qubit and coupling "
                          "fidelities)")
        if existing is not None:
            task = dataclasses.replace(existing, qubits=existing.qubits + qubits)
        else:
            task = Task(command.task, device_name, uid, qubits, [], command.topology, isolate,
                        value, time.time_ns())
        task.buffers = _buffers(device, task.qubits, task.isolate)
        return task

    def _isolation(self, asked: str) -> str:
        if asked == "none" and self._config.isolation_level != "none":
            asked = self._config.isolation_level
        return ISOLATION_ALIASES.get(asked, asked)

    def _choose(self, device: Device, held, command: ctl.Alloc, isolate: str):
        free = {q for q in range(device.num_qubits) if q not in held}
        others = {q for q, (_t, role) in held.items() if role == "allocated"}

        def usable(candidate: list[int]) -> bool:
            if isolate not in ("spatial", "strict"):
                return True
            touches = any(n in others for q in candidate for n in device.neighbors[q])
            if touches:
                self._metrics.isolation_violations.inc()
            return not touches

        return allocation.choose(device, free, command.count, command.topology, usable,
                                 strategy=self._config.allocation_strategy)

    def _take_one(self, device: Device, held, physical: int):
        if not 0 <= physical < device.num_qubits:
            raise NotFound(f"no qubit q{physical} on {device.name}")
        if physical in held:
            raise Busy(f"q{physical} is {self.status(device.name, physical)}")
        return [physical], allocation.score(device, [physical], [])

    def release(self, name: str, uid: int) -> Task:
        task = self.task(name)
        self._check_owner(task, uid)
        with self._meta.writing() as txn:
            txn.delete("tasks", name.encode())
        del self.tasks[name]
        self._live.pop(name, None)
        self._cool(task, task.qubits)
        self._update_utilization(task.device)
        return task

    def forget_task(self, name: str) -> None:
        """Drop a task record without checks (the checker's repair of an impossible task)."""
        with self._meta.writing() as txn:
            txn.delete("tasks", name.encode())
        self.tasks.pop(name, None)
        self._live.pop(name, None)

    def release_qubit(self, device_name: str, physical: int, uid: int) -> None:
        task = self._task_of(device_name, physical, uid)
        if len(task.qubits) == 1:
            self.release(task.name, uid)
            return
        logical = task.qubits.index(physical)
        if any(t.qubit == logical or any(
                logical in getattr(a, "qubits", ()) for a in t.actions) for t in task.triggers):
            raise Busy(f"q{physical} has triggers in task {task.name}; remove them first")
        kept = [q for q in task.qubits if q != physical]
        renumber = {old: new for new, old in enumerate(
            i for i, q in enumerate(task.qubits) if q != physical)}
        triggers = [_renumbered(t, renumber) for t in task.triggers]
        updated = dataclasses.replace(task, qubits=kept, triggers=triggers)
        device = self.device(device_name)
        updated.buffers = _buffers(device, kept, updated.isolate)
        self._save(updated)
        self._live.pop(task.name, None)
        self._cool(task, [physical])
        self._update_utilization(device_name)

    def _cool(self, task: Task, qubits: list[int]) -> None:
        if task.isolate in ("temporal", "strict"):
            until = time.monotonic() + self._config.temporal_cooldown_ms / 1000
            for q in qubits:
                self._cooling[(task.device, q)] = (until, task.name)

    def _check_owner(self, task: Task, uid: int) -> None:
        if uid not in (0, task.owner):
            raise PermissionDenied(f"task {task.name} belongs to uid {task.owner}, not {uid}")

    def _save(self, task: Task) -> None:
        with self._meta.writing() as txn:
            txn.put("tasks", task.name.encode(), task.to_json())
        self.tasks[task.name] = task

    def _update_utilization(self, device: str) -> None:
        self._metrics.qubit_utilization.labels(device).set(
            len(self.reservations(device)) / self.num_qubits(device))

    # -- triggers ------------------------------------------------------------------------

    def add_trigger(self, device: str, physical: int, command: ctl.On, uid: int) -> Trigger:
        if not self._config.feedforward_enabled:
            raise Disabled("feed-forward triggers are off (live_qubit_mgr.feedforward_enabled)")
        task = self._task_of(device, physical, uid)
        actions = tuple(_to_logical(task, a) for a in command.actions)
        for action in actions:
            if isinstance(action, ctl.GateAction):
                gate_matrix(action.name, action.params, len(action.qubits))  # validates
        trigger = Trigger(task.next_trigger, task.logical(physical), command.outcome, actions,
                          command.prio)
        self._save(dataclasses.replace(task, triggers=[*task.triggers, trigger],
                                       next_trigger=task.next_trigger + 1))
        return trigger

    def remove_triggers(self, device: str, physical: int, command: ctl.Off, uid: int) -> int:
        task = self._task_of(device, physical, uid)
        logical = task.logical(physical)
        keep = [t for t in task.triggers if t.qubit != logical or (
            command.trigger_id is not None and t.id != command.trigger_id)]
        removed = len(task.triggers) - len(keep)
        if command.trigger_id is not None and removed == 0:
            raise NotFound(f"no trigger {command.trigger_id} on q{physical}")
        self._save(dataclasses.replace(task, triggers=keep))
        return removed

    def _task_of(self, device: str, physical: int, uid: int) -> Task:
        held = self.reservations(device).get(physical)
        if held is None or held[1] != "allocated":
            raise Invalid(f"q{physical} is not allocated to a task")
        task = self.tasks[held[0]]
        self._check_owner(task, uid)
        return task

    # -- task commands -------------------------------------------------------------------

    def live(self, name: str) -> Live:
        task = self.task(name)
        if name not in self._live:
            self._live[name] = Live(LiveState(len(task.qubits)))
        return self._live[name]

    def last_run(self, name: str) -> dict[str, Any] | None:
        """The task's last run: in memory, or read back from its circuit's results after a
        remount; None when it has not run (or that result was deleted or its circuit renamed)."""
        live = self._live.get(name)
        if live is not None and live.last_run is not None:
            return live.last_run
        circuit, _, run = self.task(name).last_run.partition("/")
        try:
            return json.loads(self._circuits.result(circuit, run)) if run else None
        except NotFound:
            return None

    async def control_device(self, device: str, line: str, uid: int) -> str:
        """A line written to the device's ctl; returns the reply shown when it is read."""
        command = ctl.parse_device_command(line)
        if isinstance(command, ctl.Release):
            self.release(command.task or "", uid)
            return f"released {command.task}"
        return _allocated(self.allocate(device, command, uid))

    async def control_qubit(self, device: str, physical: int, line: str, uid: int) -> str:
        """A line written to a qubit's ctl; returns the reply shown when it is read."""
        command = ctl.parse_qubit_command(line)
        if isinstance(command, ctl.Alloc):
            return _allocated(self.allocate(device, command, uid, physical=physical))
        if isinstance(command, ctl.Release):
            self.release_qubit(device, physical, uid)
            return f"released q{physical}"
        if isinstance(command, ctl.On):
            return f"trigger {self.add_trigger(device, physical, command, uid).id} registered"
        return f"removed {self.remove_triggers(device, physical, command, uid)} trigger(s)"

    async def execute(self, name: str, command: ctl.LiveTaskCommand, uid: int) -> str:
        """Run one command of a task's ctl; returns the reply shown when it is read."""
        task = self.task(name)
        self._check_owner(task, uid)
        if isinstance(command, ctl.Release):
            self.release(name, uid)
            return f"released {name}"
        if isinstance(command, ctl.SetAction):
            self._save(dataclasses.replace(
                task, parameters={**task.parameters, command.name: command.value}))
            if name in self._live:  # the latest statement holds, over a trigger's set
                self._live[name].parameters.pop(command.name, None)
            return f"set {command.name}={command.value!r}"
        if isinstance(command, ctl.Reset):
            live = self.live(name)
            live.state.reset()
            live.stopped = False  # the measurement history stays: it is a log
            live.parameters.clear()
            return "reset to |0...0>"
        if isinstance(command, ctl.Measure):
            return self._measure(task, command.qubit)
        if isinstance(command, ctl.Apply):
            return await self._apply(task, command)
        if isinstance(command, ctl.Checkpoint):
            return await self._checkpoint(task, command)
        if isinstance(command, ctl.Restore):
            return await self._restore(task, command.name, uid)
        return await self._run(task, command)

    async def _checkpoint(self, task: Task, command: ctl.Checkpoint) -> str:
        vector = self.live(task.name).state.vector.copy()
        request = Request(command.name, task=task.name, format=command.format,
                          encrypt=command.encrypt, retention=command.retention,
                          parent=command.parent, owner=task.owner)
        prepared = await native.run_sync(self._states.prepare, request, vector)
        self._metrics.serialization_seconds.observe(prepared.meta["serialization_seconds"])
        meta = await trio.to_thread.run_sync(self._states.commit, prepared)  # hash, fsync
        self._metrics.checkpoint_size_bytes.observe(meta["stored_bytes"])
        self._metrics.compression_ratio.set(meta["compression_ratio"])
        return (f"checkpoint {meta['name']}: {meta['format']}, fidelity "
                f"{meta['fidelity']:.12g}, {meta['stored_bytes']} bytes stored")

    async def _restore(self, task: Task, name: str, uid: int) -> str:
        """Load a checkpoint (a mixed one as its top eigenvector) and report what is live:
        its fidelity to the checkpoint's decoded state, measured, and to the state that was
        checkpointed, a bound (exact for formats that decode to a vector). Only the
        checkpoint's owner (or root) may restore it: a live state can be read out, and the
        decoded state of a checkpoint is readable by its owner alone."""
        started = time.perf_counter()
        record = self._states.get(name)
        if uid != 0 and owner_of(record) != uid:
            raise PermissionDenied(f"checkpoint {name} belongs to uid {owner_of(record)}")
        held = record["qubit_count"]
        if held != len(task.qubits):
            raise Invalid(f"checkpoint {name} holds {held} qubits; task {task.name} has "
                          f"{len(task.qubits)}")

        def load():
            meta, decoded = self._states.load(name)
            vector = pure_state_of(decoded)
            return meta, vector, fidelity(decoded, vector)

        meta, vector, measured = await native.run_sync(load)
        at_least = fidelity_at_least(meta["fidelity"], measured)
        live = self.live(task.name)
        live.state.vector = vector.copy()
        live.stopped = False
        live.parameters.clear()
        live.restored = {"checkpoint": name, "format": meta["format"], "fidelity": measured,
                         "checkpoint_fidelity": meta["fidelity"],
                         "fidelity_to_checkpointed_at_least": at_least,
                         "physical_qubits": list(task.qubits)}
        self._metrics.deserialization_seconds.observe(time.perf_counter() - started)
        return (f"restored {name} onto {task.name}: fidelity {measured:.12g} to the "
                f"checkpoint's decoded state, at least {at_least:.12g} to the state checkpointed")

    def _measure(self, task: Task, logical: int) -> str:
        if not 0 <= logical < len(task.qubits):
            raise Invalid(f"task {task.name} has logical qubits q0..q{len(task.qubits) - 1}")
        live = self.live(task.name)
        if live.stopped:
            raise Busy(f"task {task.name} was stopped by a trigger; write reset to start again")
        outcome = dispatch_live(live.state, logical, task.triggers, live.parameters)
        self._metrics.feedforward_latency_seconds.observe(outcome.latency_ns / 1e9)
        live.stopped = outcome.stopped
        record = {"qubit": logical, "physical": task.qubits[logical],
                  "outcome": outcome.outcome, "triggers": outcome.fired,
                  "latency_ns": outcome.latency_ns, "stopped": outcome.stopped}
        live.measurements = [*live.measurements[-19:], record]
        fired = f" triggers {','.join(map(str, outcome.fired))}" if outcome.fired else ""
        return f"q{logical}={outcome.outcome}{fired}"

    async def _apply(self, task: Task, command: ctl.Apply) -> str:
        circuit = self._circuit_for(task, command.circuit, command.version)
        parameters = {**task.parameters, **self.live(task.name).parameters}
        await self.apply_circuit(task.name, compile_dynamic(circuit, [], parameters))
        return f"applied {command.circuit}"

    async def apply_circuit(self, name: str, circuit) -> None:
        """Evolve the task's live state by a unitary circuit, all or nothing (a thread)."""
        live = self.live(name)
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

    def move_task(self, name: str, device_name: str, uid: int, vector,
                  record: dict[str, Any]) -> Task:
        """Reallocate a task on another device and load `vector` there (`record`, what the
        migration kept, goes to state.json); on any refusal the task stays where it was."""
        task = self.task(name)
        self._check_owner(task, uid)
        device = self.device(device_name)
        held = self.reservations(device_name)
        command = ctl.Alloc(len(task.qubits), name, task.topology, 0.0, task.isolate)
        qubits, value = self._choose(device, held, command, task.isolate)
        buffers = _buffers(device, qubits, task.isolate)
        moved = dataclasses.replace(task, device=device_name, qubits=qubits, buffers=buffers,
                                    score=value)
        self._save(moved)
        self._cool(task, task.qubits)
        live = self.live(name)
        live.state.vector = vector.copy()
        live.migrated = {"from": task.device, **record}
        self._update_utilization(task.device)
        self._update_utilization(device_name)
        return moved

    def _circuit_for(self, task: Task, name: str, version: int | None):
        circuit = self._circuits.circuit(name, version)
        if circuit.num_qubits > len(task.qubits):
            raise Invalid(f"{name} needs {circuit.num_qubits} qubits; task {task.name} has "
                          f"{len(task.qubits)}")
        return circuit

    async def _run(self, task: Task, command: ctl.Run) -> str:
        source = self._circuits.get(command.circuit)
        version = command.version or (source.latest.n if source.latest else None)
        if version is None:
            raise Invalid(f"circuit {command.circuit} has no version to run")
        stats = source.version(version).stats
        if stats["num_qubits"] > len(task.qubits):
            raise Invalid(f"{command.circuit} needs {stats['num_qubits']} qubits; task "
                          f"{task.name} has {len(task.qubits)}")
        job = self._run_job(task, command, self._circuits.source(command.circuit, version),
                            stats)
        started = time.perf_counter()
        counts = await trio.to_thread.run_sync(self._workers.run, execution.run, job)
        seed = job.seed
        duration = time.perf_counter() - started
        self._metrics.gate_operation_seconds.observe(duration)
        self._runs += 1
        run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{task.name}-{self._runs}"
        document = {
            "run": run_id, "circuit": command.circuit, "version": version, "task": task.name,
            "device": task.device, "physical_qubits": list(job.physical),
            "shots": command.shots, "noise": command.noise, "seed": seed, "counts": counts,
            "triggers": [t.describe(task.qubits) for t in task.triggers],
            "parameters": task.parameters, "duration_s": round(duration, 6),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._circuits.put_result(command.circuit, f"{run_id}.json",
                                  json.dumps(document, indent=2).encode() + b"\n")
        if task.name in self.tasks:
            if task.name in self._live:  # a run never builds a live state (25+ qubits: none)
                self._live[task.name].last_run = document
            self._save(dataclasses.replace(self.tasks[task.name],
                                           last_run=f"{command.circuit}/{run_id}.json"))
        return f"ran {command.circuit}@v{version}: results/{run_id}.json"

    def _run_job(self, task: Task, command: ctl.Run, source: bytes,
                 stats: dict[str, Any]) -> execution.RunJob:
        """Everything a worker needs for this run, as plain data: the circuit's qubits and
        any idle task qubit a trigger acts on, the triggers on qubits the circuit measures,
        and a seed (one qfs picks comes from the operating system's random source, so
        consecutive runs are independent)."""
        measured = max(stats["num_qubits"], 1)
        used = tuple(task.qubits[:feedforward.width(measured, task.triggers)])
        device = self.device(task.device)
        local = {p: i for i, p in enumerate(used)}
        edges = tuple(sorted((local[a], local[b]) for a, b in device.edges
                             if a in local and b in local))
        triggers = tuple(t for t in task.triggers if t.qubit < stats["num_qubits"])
        seed = command.seed if command.seed is not None else secrets.randbelow(2**63)
        return execution.RunJob(
            source=source, sha256=stats["sha256"], limits=self._circuits.limits, physical=used,
            edges=edges, triggers=triggers, parameters=tuple(sorted(task.parameters.items())),
            shots=command.shots, seed=seed,
            calibration=self._calibration(device, used) if command.noise else None)

    def _calibration(self, device: Device, used: tuple[int, ...]) -> execution.Calibration:
        """The device's calibration on `used` (renumbered 0..n-1), from which the worker
        builds their noise model, so Aer simulates n qubits only; kept per task qubits."""
        key = (device.name, used)
        if key not in self._calibrations:
            self._calibrations[key] = device.calibration_on(used)
        return self._calibrations[key]

    # -- views ---------------------------------------------------------------------------

    def mapping_text(self, name: str) -> str:
        task = self.task(name)
        return "".join(f"q{i} q{p}\n" for i, p in enumerate(task.qubits))

    def triggers_text(self, name: str) -> str:
        task = self.task(name)
        return "".join(t.describe(task.qubits) + "\n" for t in task.triggers)

    def state_json(self, name: str) -> dict[str, Any]:
        task = self.task(name)
        live = self._live.get(name)
        document: dict[str, Any] = {
            "task": task.name, "device": task.device, "owner_uid": task.owner,
            "qubits": [f"q{p}" for p in task.qubits], "buffers": [f"q{p}" for p in task.buffers],
            "topology": task.topology, "isolate": task.isolate, "score": round(task.score, 6),
            "parameters": task.parameters, "triggers": len(task.triggers),
        }
        if live is None:
            document["live"] = {"state": "|0...0> (untouched since allocation or remount)"}
        else:
            probabilities = abs(live.state.vector) ** 2
            top = sorted(enumerate(probabilities), key=lambda kv: -kv[1])[:8]
            document["live"] = {
                "num_qubits": live.state.num_qubits, "stopped": live.stopped,
                "norm": float(probabilities.sum()),
                "top_probabilities": {format(i, f"0{live.state.num_qubits}b"): float(p)
                                      for i, p in top if p > 1e-12},
                "measurements": live.measurements, "parameters": live.parameters,
            }
            if live.restored is not None:
                document["live"]["restored"] = live.restored
            if live.migrated is not None:
                document["live"]["migrated"] = live.migrated
            if live.last_run is not None:
                document["last_run"] = {k: live.last_run[k] for k in ("run", "circuit",
                                                                       "version", "counts")}
        return document


def fidelity_at_least(*links: float) -> float:
    """A lower bound on the fidelity across a chain of states from the fidelities of its
    links: the Bures angle arccos(sqrt(F)) is a metric, so the angles add at most."""
    angle = sum(math.acos(math.sqrt(min(1.0, max(0.0, f)))) for f in links)
    return math.cos(min(angle, math.pi / 2)) ** 2


def _allocated(task: Task) -> str:
    qubits = " ".join(f"q{p}" for p in task.qubits)
    return f"allocated {task.name}: {qubits} (score {task.score:.4f})"


def _buffers(device: Device, qubits: list[int], isolate: str) -> list[int]:
    """The neighbours kept free around a spatially isolated task (none otherwise)."""
    if isolate not in ("spatial", "strict"):
        return []
    return sorted({n for q in qubits for n in device.neighbors[q]} - set(qubits))


def _to_logical(task: Task, action: ctl.Action) -> ctl.Action:
    if isinstance(action, ctl.GateAction):
        return dataclasses.replace(action, qubits=tuple(task.logical(q) for q in action.qubits))
    return action


def _renumbered(trigger: Trigger, renumber: dict[int, int]) -> Trigger:
    actions = tuple(
        dataclasses.replace(a, qubits=tuple(renumber[q] for q in a.qubits))
        if isinstance(a, ctl.GateAction) else a for a in trigger.actions)
    return dataclasses.replace(trigger, qubit=renumber[trigger.qubit], actions=actions)
