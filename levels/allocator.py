"""Who holds which physical qubits: allocation to tasks, release, isolation and cooling
(allocation.py chooses the qubits; this keeps the books). Every call either completes or
changes nothing: it is validated fully before the first mutation.

Isolation: `spatial` reserves every neighbour of a task's qubits as a buffer (and refuses
candidates that touch another task's qubits); `temporal` keeps released qubits cooling for
`temporal_cooldown_ms` before another task may take them; `strict` is both.
"""

import dataclasses
import time
from collections.abc import Callable

from levels import allocation, ctl, triggers
from levels.circuits import validate_name
from levels.config import LiveQubitConfig
from levels.devices import Device, Devices
from levels.errors import Busy, Invalid, NoSpace, NotFound
from levels.metrics import Metrics
from levels.tasks import Task, TaskTable

ISOLATION_ALIASES = {"spatial_temporal": "strict"}
Held = dict[int, tuple[str, str]]  # physical qubit -> (task, "allocated" | "buffer" | "cooling")


class Allocator:
    def __init__(self, devices: Devices, table: TaskTable, config: LiveQubitConfig,
                 metrics: Metrics, reshaped: Callable[[str], None]) -> None:
        self._devices = devices
        self._table = table
        self._config = config
        self._metrics = metrics
        self._reshaped = reshaped  # a task's register changed: its live state is void
        self._cooling: dict[tuple[str, int], tuple[float, str]] = {}

    def reservations(self, device: str) -> Held:
        held: Held = {}
        now = time.monotonic()
        for (dev, q), (until, name) in list(self._cooling.items()):
            if until <= now:
                del self._cooling[(dev, q)]
            elif dev == device:
                held[q] = (name, "cooling")
        for task in self._table.tasks.values():
            if task.device != device:
                continue
            for q in task.buffers:
                held.setdefault(q, (task.name, "buffer"))
            for q in task.qubits:
                held[q] = (task.name, "allocated")
        return held

    def status(self, device: str, q: int) -> str:
        name, role = self.reservations(device).get(q, ("", "free"))
        if role == "free":
            return "free"
        if role == "allocated":
            return f"allocated to {name} (logical q{self._table.tasks[name].qubits.index(q)})"
        if role == "buffer":
            return f"isolated (buffer of {name})"
        return f"cooling (released by {name})"

    def holder(self, device: str, physical: int, uid: int) -> Task:
        """The task holding `physical`, which `uid` may command from this host (its
        triggers and qubits are its live state's, which lives on its host)."""
        held = self.reservations(device).get(physical)
        if held is None or held[1] != "allocated":
            raise Invalid(f"q{physical} is not allocated to a task")
        task = self._table.tasks[held[0]]
        task.check_owner(uid)
        self._table.check_here(task)
        return task

    def allocate(self, device_name: str, command: ctl.Alloc, uid: int,
                 physical: int | None = None) -> Task:
        """Allocate `command.count` qubits (or the one `physical` qubit) to a task, chosen
        from the tasks as stored and recorded in the same write transaction."""
        started = time.perf_counter()
        validate_name(command.task, "task name")
        device = self._devices.get(device_name)
        isolate = self._isolation(command.isolate)
        task = self._table.save_chosen(
            lambda: self._allocation(device, command, uid, physical, isolate))
        self._reshaped(task.name)
        self._metrics.qubit_allocation_seconds.observe(time.perf_counter() - started)
        self._update_utilization(device_name)
        return task

    def _allocation(self, device: Device, command: ctl.Alloc, uid: int, physical: int | None,
                    isolate: str) -> Task:
        device_name = device.name
        existing = self._table.tasks.get(command.task)
        if existing is not None:
            existing.check_owner(uid)
            self._table.check_here(existing)
            if physical is None:
                raise Busy(f"task {command.task} already holds qubits; release it first")
            if existing.device != device_name:
                raise Busy(f"task {command.task} lives on device {existing.device}")
        held = self.reservations(device_name)
        if physical is not None:
            qubits, value = self._take_one(device, held, physical, command.task,
                                           existing.isolate if existing else isolate)
        else:
            qubits, value = self._choose(device, held, command.count, command.topology, isolate)
        if value < command.noise:
            raise NoSpace(f"best {command.topology} set scores {value:.4f} < noise="
                          f"{command.noise} (score: geometric mean of qubit and coupling "
                          "fidelities)")
        if existing is not None:
            task = dataclasses.replace(existing, qubits=existing.qubits + qubits)
        else:
            task = Task(command.task, device_name, uid, qubits, [], command.topology, isolate,
                        value, time.time_ns(), host=self._table.host)
        task.buffers = _buffers(device, task.qubits, task.isolate)
        return task

    def _isolation(self, asked: str) -> str:
        if asked == "none" and self._config.isolation_level != "none":
            asked = self._config.isolation_level
        return ISOLATION_ALIASES.get(asked, asked)

    def _choose(self, device: Device, held: Held, count: int, topology: str,
                isolate: str) -> tuple[list[int], float]:
        free = {q for q in range(device.num_qubits) if q not in held}
        strategy = self._config.allocation_strategy
        if isolate not in ("spatial", "strict"):
            return allocation.choose(device, free, count, topology, strategy)
        # Whether a qubit may be taken is its own property (no neighbour held by another
        # task), so the others are left out before the candidates are made: vetoing
        # candidates after could use up the few the search makes while a set existed.
        others = {q for q, (_t, role) in held.items() if role == "allocated"}
        apart = {q for q in free if not any(n in others for n in device.neighbors[q])}
        try:
            return allocation.choose(device, apart, count, topology, strategy,
                                     free_means="free and apart from other tasks' qubits")
        except NoSpace:
            if apart != free:  # refused to keep isolation
                self._metrics.isolation_violations.inc()
            raise

    def _take_one(self, device: Device, held: Held, physical: int, task: str,
                  isolate: str) -> tuple[list[int], float]:
        """qK/ctl's `alloc`: that qubit for `task`, kept apart from other tasks' qubits as
        its isolation asks (as _choose keeps a set of them)."""
        if not 0 <= physical < device.num_qubits:
            raise NotFound(f"no qubit q{physical} on {device.name}")
        if physical in held:
            raise Busy(f"q{physical} is {self.status(device.name, physical)}")
        if isolate in ("spatial", "strict"):
            for near in device.neighbors[physical]:
                holder, role = held.get(near, (task, ""))
                if role == "allocated" and holder != task:
                    self._metrics.isolation_violations.inc()
                    raise Busy(f"q{physical} is next to q{near} of task {holder}, and "
                               f"isolate={isolate} keeps a task's qubits apart")
        return [physical], allocation.score(device, [physical], [])

    def release(self, name: str, uid: int) -> Task:
        task = self._table.get(name)
        task.check_owner(uid)
        self._table.delete(name)
        self._reshaped(name)
        self._cool(task, task.qubits)
        self._update_utilization(task.device)
        return task

    def forget(self, name: str) -> None:
        """Drop a task record without checks (the checker's repair of an impossible task)."""
        self._table.delete(name)
        self._reshaped(name)

    def release_qubit(self, device_name: str, physical: int, uid: int) -> None:
        task = self.holder(device_name, physical, uid)
        if len(task.qubits) == 1:
            self.release(task.name, uid)
            return
        kept = [q for q in task.qubits if q != physical]
        updated = dataclasses.replace(
            task, qubits=kept, triggers=triggers.without_qubit(task, physical),
            buffers=_buffers(self._devices.get(device_name), kept, task.isolate))
        self._table.save(updated)
        self._reshaped(task.name)
        self._cool(task, [physical])
        self._update_utilization(device_name)

    def move(self, name: str, device_name: str, uid: int) -> Task:
        """Reallocate a task, as shaped and isolated as it is, on another device; on any
        refusal it stays where it was. Its live state is the caller's to load."""
        task = self._table.get(name)
        task.check_owner(uid)
        device = self._devices.get(device_name)
        qubits, value = self._choose(device, self.reservations(device_name), len(task.qubits),
                                     task.topology, task.isolate)
        moved = dataclasses.replace(task, device=device_name, qubits=qubits,
                                    buffers=_buffers(device, qubits, task.isolate), score=value)
        self._table.save(moved)
        self._cool(task, task.qubits)
        self._update_utilization(task.device)
        self._update_utilization(device_name)
        return moved

    def _cool(self, task: Task, qubits: list[int]) -> None:
        if task.isolate in ("temporal", "strict"):
            until = time.monotonic() + self._config.temporal_cooldown_ms / 1000
            for q in qubits:
                self._cooling[(task.device, q)] = (until, task.name)

    def _update_utilization(self, device: str) -> None:
        self._metrics.qubit_utilization.labels(device).set(
            len(self.reservations(device)) / self._devices.spec(device).qubits)


def _buffers(device: Device, qubits: list[int], isolate: str) -> list[int]:
    """The neighbours kept free around a spatially isolated task (none otherwise)."""
    if isolate not in ("spatial", "strict"):
        return []
    return sorted({n for q in qubits for n in device.neighbors[q]} - set(qubits))
