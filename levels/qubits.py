"""Level 1, LiveQubitManager: the one face of the live-qubit level that the tree and the
coordinator call. It takes each control file's line, parses it once (ctl.py) and hands
the typed command to the part that owns it:

    devices.Devices               the device models, built on first use
    tasks.TaskTable               task records, persisted in the metadata table `tasks`
    allocator.Allocator           who holds which qubits: allocation, release, isolation
    triggers                      feed-forward triggers kept in the task records
    livetasks.LiveTasks           what is live on a task's qubits (not persisted)
    taskcheckpoints               a live state to and from the state store
    taskruns.TaskRuns             runs on Aer with the device's noise, and their results
    taskviews                     what a task's files show

Every command either completes or changes nothing: it is validated fully before the first
mutation.
"""

from typing import Any, assert_never

import numpy as np

from levels import ctl, taskviews, triggers
from levels.allocator import Allocator
from levels.circuits import CircuitStore
from levels.config import LiveQubitConfig
from levels.devices import Device, Devices, DeviceSpec
from levels.durations import parse_interval
from levels.errors import Disabled, QfsError
from levels.events import EventHub, task_topic
from levels.livetasks import Live, LiveTasks
from levels.metrics import Metrics
from levels.states import StateStore
from levels.store.meta import MetaStore
from levels.taskcheckpoints import TaskCheckpoints
from levels.taskruns import TaskRuns
from levels.tasks import Task, TaskTable
from levels.workers import WorkerPool

__all__ = ["LiveQubitManager", "Task"]


class LiveQubitManager:
    def __init__(
        self, meta: MetaStore, circuits: CircuitStore, states: StateStore,
        config: LiveQubitConfig, metrics: Metrics, workers: WorkerPool,
    ) -> None:
        self._config = config
        self.devices = Devices([DeviceSpec(d.name, d.qubits, d.topology, d.seed)
                                for d in config.devices],
                               recalibrate_every_s=parse_interval(config.calibration_interval))
        self.specs = self.devices.specs
        self.default_device = self.devices.default
        self.table = TaskTable(meta)
        self.live_tasks = LiveTasks(self.table, circuits, metrics)
        self.allocator = Allocator(self.devices, self.table, config, metrics,
                                   reshaped=self.live_tasks.drop)
        self.checkpoints = TaskCheckpoints(states, self.live_tasks, metrics)
        self.runs = TaskRuns(circuits, workers, self.devices, self.table, self.live_tasks,
                             metrics)
        self.events = EventHub()  # tasks/<T>/events and /workflows/<W>/events

    # -- devices and tasks ---------------------------------------------------------------

    def device_names(self) -> list[str]:
        return self.devices.names()

    def device(self, name: str) -> Device:
        return self.devices.get(name)

    def num_qubits(self, device: str) -> int:
        return self.devices.spec(device).qubits

    @property
    def tasks(self) -> dict[str, Task]:
        return self.table.tasks

    @tasks.setter
    def tasks(self, tasks: dict[str, Task]) -> None:
        """Another host changed the stored tasks (hosts.py): this host's table follows."""
        self.table.tasks = tasks

    def task(self, name: str) -> Task:
        return self.table.get(name)

    def tasks_on(self, device: str) -> list[str]:
        return self.table.on(device)

    def status(self, device: str, q: int) -> str:
        return self.allocator.status(device, q)

    def allocate(self, device: str, command: ctl.Alloc, uid: int,
                 physical: int | None = None) -> Task:
        return self.allocator.allocate(device, command, uid, physical)

    def release(self, name: str, uid: int) -> Task:
        return self.allocator.release(name, uid)

    def forget_task(self, name: str) -> None:
        self.allocator.forget(name)

    # -- control files -------------------------------------------------------------------

    async def control_device(self, device: str, line: str, uid: int) -> str:
        """A line written to the device's ctl; returns the reply shown when it is read."""
        command = ctl.parse_device_command(line)
        if isinstance(command, ctl.Release):
            task = self.table.get(command.task or "")
            self.table.check_here(task)  # its live state is there
            self.allocator.release(task.name, uid)
            return f"released {command.task}"
        return _allocated(self.allocator.allocate(device, command, uid))

    async def control_qubit(self, device: str, physical: int, line: str, uid: int) -> str:
        """A line written to a qubit's ctl; returns the reply shown when it is read."""
        command = ctl.parse_qubit_command(line)
        if isinstance(command, ctl.Alloc):
            return _allocated(self.allocator.allocate(device, command, uid, physical))
        if isinstance(command, ctl.Release):
            self.allocator.release_qubit(device, physical, uid)
            return f"released q{physical}"
        if isinstance(command, ctl.On) and not self._config.feedforward_enabled:
            raise Disabled("feed-forward triggers are off (live_qubit_mgr.feedforward_enabled)")
        task = self.allocator.holder(device, physical, uid)
        if isinstance(command, ctl.On):
            trigger = triggers.add(self.table, task, physical, command)
            return f"trigger {trigger.id} registered"
        return f"removed {triggers.remove(self.table, task, physical, command)} trigger(s)"

    async def execute(self, name: str, command: ctl.LiveTaskCommand, uid: int) -> str:
        """Run one command of a task's ctl; returns the reply shown when it is read."""
        task = self.table.get(name)
        task.check_owner(uid)
        self.table.check_here(task)
        match command:
            case ctl.Release():
                self.allocator.release(name, uid)
                return f"released {name}"
            case ctl.SetAction():
                return self.live_tasks.set_parameter(task, command)
            case ctl.Reset():
                return self.live_tasks.reset(name)
            case ctl.Measure():
                reply = self.live_tasks.measure(task, command.qubit)
                self._measured(task)
                return reply
            case ctl.Apply():
                return await self.live_tasks.apply(task, command)
            case ctl.Checkpoint():
                reply = await self.checkpoints.checkpoint(task, command)
                self.events.publish(task_topic(name), "checkpoint", name=command.name,
                                    path=f"/states/{command.name}", reply=reply)
                return reply
            case ctl.Restore():
                return await self.checkpoints.restore(task, command.name, uid)
            case ctl.Run():
                return await self._run(task, command)
            case _:
                assert_never(command)

    def _measured(self, task: Task) -> None:
        """The measurement's event, then one per trigger it fired, with its action."""
        record = self.live_tasks.get(task.name).measurements[-1]
        topic = task_topic(task.name)
        self.events.publish(topic, "measurement", **record)
        fired = {trigger.id: trigger for trigger in task.triggers}
        for number in record["triggers"]:
            if number in fired:
                self.events.publish(topic, "trigger", trigger=number,
                                    action=fired[number].describe(task.qubits))

    async def _run(self, task: Task, command: ctl.Run) -> str:
        topic = task_topic(task.name)
        self.events.publish(topic, "run_started", circuit=command.circuit,
                            version=command.version, shots=command.shots)
        try:
            reply, result = await self.runs.run(task, command)
        except QfsError as exc:
            self.events.publish(topic, "run_failed", circuit=command.circuit, reason=str(exc))
            raise
        self.events.publish(topic, "run_finished", circuit=command.circuit, reply=reply,
                            result=f"/circuits/{command.circuit}/results/{result}")
        return reply

    # -- for the coordinator -------------------------------------------------------------

    def live(self, name: str) -> Live:
        return self.live_tasks.get(name)

    async def apply_circuit(self, name: str, circuit) -> None:
        await self.live_tasks.apply_circuit(name, circuit)

    def move_task(self, name: str, device: str, uid: int, vector: np.ndarray,
                  record: dict[str, Any]) -> Task:
        """Reallocate a task on another device and load `vector` there (`record`, what the
        migration kept, goes to state.json); on any refusal the task stays where it was."""
        whence = self.table.get(name).device
        moved = self.allocator.move(name, device, uid)
        live = self.live_tasks.get(name)
        live.state.vector = vector.copy()
        live.history = [{"migrated_from": whence}]
        live.migrated = {"from": whence, **record}
        self.events.publish(task_topic(name), "migration", **live.migrated, to=device,
                            qubits=list(moved.qubits))
        return moved

    # -- what a task's files show --------------------------------------------------------

    def last_run(self, name: str) -> dict[str, Any] | None:
        return self.runs.last_run(name)

    def mapping_text(self, name: str) -> str:
        return taskviews.mapping_text(self.table.get(name))

    def triggers_text(self, name: str) -> str:
        return taskviews.triggers_text(self.table.get(name))

    def state_json(self, name: str) -> dict[str, Any]:
        return taskviews.state_json(self.table.get(name), self.live_tasks.peek(name),
                                    here=self.table.host)


def _allocated(task: Task) -> str:
    qubits = " ".join(f"q{p}" for p in task.qubits)
    return f"allocated {task.name}: {qubits} (score {task.score:.4f})"
