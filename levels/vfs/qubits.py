"""The /qubits tree (Level 1, the default device) and /devices/<name>/ (the others), with
the same layout:

    ctl                       alloc N task=T ... | release task=T
    telemetry                 one JSON line per sample of the device's load (telemetry.py)
    q<K>/status               free | allocated to T | isolated (buffer of T) | cooling
    q<K>/calibration.json     T1, T2, readout and gate errors from the device model
    q<K>/neighbors            coupled qubits, one per line
    q<K>/ctl                  alloc task=T | release | on 0|1 do ... | off ID|all
    tasks/<T>/mapping         logical -> physical, one "qI qP" per line
    tasks/<T>/ctl             run | apply | measure | reset | set | release | checkpoint ...
    tasks/<T>/triggers        registered feed-forward triggers
    tasks/<T>/state.json      allocation and what is live on the qubits now
    tasks/<T>/result.json     the task's last run
    tasks/<T>/events          (unlisted) one JSON line per event as it happens; blocks

Control lines are parsed once by levels/ctl.py inside the levels the ctl files call; a
bad line is EINVAL, a qubit or task held by another EBUSY, another user's task EACCES.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from levels.errors import NotFound
from levels.events import task_topic
from levels.vfs.entry import (
    STARTED_NS,
    Constant,
    ControlFile,
    Dir,
    Entry,
    Live,
    Names,
    Path,
    Stream,
    directory,
    immutable_file,
)

if TYPE_CHECKING:
    from levels.fabric import Fabric

QUBITS, DEVICES = "qubits", "devices"
_QUBIT_DIR = re.compile(r"^q(0|[1-9][0-9]{0,3})$")
QUBIT_FILES = ["calibration.json", "ctl", "neighbors", "status"]
TASK_FILES = ["ctl", "mapping", "result.json", "state.json", "triggers"]


def other_devices(fabric: Fabric) -> Names:
    return [d for d in fabric.qubits.device_names() if d != fabric.qubits.default_device]


class DevicesDir(Dir):
    """/devices: one directory per configured device other than the default (/qubits)."""

    def __init__(self, fabric: Fabric, path: Path) -> None:
        super().__init__(fabric, path, directory(STARTED_NS, perm=0o555))

    def names(self) -> Names:
        return other_devices(self.fabric)

    async def lookup(self, name: str) -> Entry:
        if name not in other_devices(self.fabric):
            raise NotFound(f"no device {name} under /devices (the default is /qubits)")
        return QubitsDir(self.fabric, self.child(name), name)


class QubitsDir(Dir):
    """/qubits or /devices/<name>: the device's ctl, its tasks/ and one q<K>/ per qubit."""

    def __init__(self, fabric: Fabric, path: Path, device: str) -> None:
        super().__init__(fabric, path, directory(STARTED_NS))
        self.device = device

    def names(self) -> Names:
        count = self.fabric.qubits.num_qubits(self.device)
        return ["ctl", "tasks", "telemetry", *(f"q{i}" for i in range(count))]

    async def lookup(self, name: str) -> Entry:
        if name == "ctl":
            return DeviceCtl(self.fabric, self.child(name), self.device)
        if name == "tasks":
            return TasksDir(self.fabric, self.child(name), self.device)
        if name == "telemetry":
            return Live(self.fabric, self.child(name),
                        lambda: self.fabric.telemetry.text(self.device))
        match = _QUBIT_DIR.match(name)
        if not match or int(match.group(1)) >= self.fabric.qubits.num_qubits(self.device):
            raise NotFound(f"no qubit {name} on {self.device}")
        return QubitDir(self.fabric, self.child(name), self.device, int(match.group(1)))


class DeviceCtl(ControlFile):
    """<device>/ctl: alloc N task=T [topology=..] [noise=..] [isolate=..] | release task=T."""

    def __init__(self, fabric: Fabric, path: Path, device: str) -> None:
        super().__init__(fabric, path)
        self.device = device

    async def control(self, line: str, uid: int) -> str:
        return await self.fabric.qubits.control_device(self.device, line, uid)


class QubitDir(Dir):
    """q<K>/: status and calibration.json (live: devices are calibrated anew every
    calibration_interval), neighbors (immutable), ctl."""

    def __init__(self, fabric: Fabric, path: Path, device: str, q: int) -> None:
        super().__init__(fabric, path, directory(STARTED_NS))
        self.device, self.q = device, q

    def names(self) -> Names:
        return list(QUBIT_FILES)

    async def lookup(self, name: str) -> Entry:
        manager, device, q, path = self.fabric.qubits, self.device, self.q, self.child(name)
        if name == "status":
            return Live(self.fabric, path, lambda: manager.status(device, q) + "\n")
        if name == "calibration.json":
            return Live(self.fabric, path, lambda: json.dumps(
                manager.device(device).calibration_json(q), indent=2) + "\n")
        if name == "neighbors":
            return _fixed(self.fabric, path,
                          "".join(f"q{n}\n" for n in manager.device(device).neighbors[q]))
        if name == "ctl":
            return QubitCtl(self.fabric, path, device, q)
        return await super().lookup(name)


def _fixed(fabric: Fabric, path: Path, text: str) -> Constant:
    """A device model's file: fixed for the life of the mount."""
    return Constant(fabric, path, text.encode(), immutable_file(0, STARTED_NS))


class QubitCtl(ControlFile):
    """q<K>/ctl: alloc task=T | release | on 0|1 do ACTIONS [prio=N] | off ID|all."""

    def __init__(self, fabric: Fabric, path: Path, device: str, q: int) -> None:
        super().__init__(fabric, path)
        self.device, self.q = device, q

    async def control(self, line: str, uid: int) -> str:
        return await self.fabric.qubits.control_qubit(self.device, self.q, line, uid)


class TasksDir(Dir):
    """tasks/: one directory per task allocated on this device."""

    def __init__(self, fabric: Fabric, path: Path, device: str) -> None:
        super().__init__(fabric, path, directory(STARTED_NS))
        self.device = device

    def names(self) -> Names:
        return self.fabric.qubits.tasks_on(self.device)

    async def lookup(self, name: str) -> Entry:
        task = self.fabric.qubits.task(name)
        if task.device != self.device:
            raise NotFound(f"task {name} is on device {task.device}")
        return TaskDir(self.fabric, self.child(name), directory(task.created_ns))


class TaskDir(Dir):
    """tasks/<T>/: mapping, triggers, state.json (live), result.json once it has run, ctl."""

    def names(self) -> Names:
        names = list(TASK_FILES)
        if self.fabric.qubits.last_run(self.path[-1]) is None:
            names.remove("result.json")
        return names

    async def lookup(self, name: str) -> Entry:
        manager, task, path = self.fabric.qubits, self.path[-1], self.child(name)
        if name == "ctl":
            return TaskCtl(self.fabric, path)
        if name == "mapping":
            return Live(self.fabric, path, lambda: manager.mapping_text(task))
        if name == "triggers":
            return Live(self.fabric, path, lambda: manager.triggers_text(task))
        if name == "state.json":
            return Live(self.fabric, path,
                        lambda: json.dumps(manager.state_json(task), indent=2) + "\n")
        if name == "result.json":
            last = manager.last_run(task)
            if last is None:
                raise NotFound(f"task {task} has not run yet")
            return Live(self.fabric, path, lambda: json.dumps(last, indent=2) + "\n")
        if name == "events":  # unlisted: grep -r and cp -a never wait on it
            return Stream(self.fabric, path, lambda: manager.events.subscribe(task_topic(task)))
        return await super().lookup(name)


class TaskCtl(ControlFile):
    """tasks/<T>/ctl: run C[@vN] | apply | measure qK | reset | set | release | checkpoint
    NAME | restore NAME | migrate device=D (the coordinator's)."""

    async def control(self, line: str, uid: int) -> str:
        return await self.fabric.coordinator.control_task(self.path[-2], line, uid)
