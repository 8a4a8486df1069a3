"""The /qubits tree (the default device) and /devices/<name>/ (the others), same layout:

    ctl                       alloc N task=T ... | release task=T
    q<K>/status               free | allocated to T | isolated (buffer of T) | cooling
    q<K>/calibration.json     T1, T2, readout and gate errors from the device model
    q<K>/neighbors            coupled qubits, one per line
    q<K>/ctl                  alloc task=T | release | on 0|1 do ... | off ID|all
    tasks/<T>/mapping         logical -> physical, one "qI qP" per line
    tasks/<T>/ctl             run | apply | measure | reset | set | release
    tasks/<T>/triggers        registered feed-forward triggers
    tasks/<T>/state.json      allocation and what is live on the qubits now
    tasks/<T>/result.json     the task's last run
"""

import functools
import json
import re
import time

from fsops import nodes
from fsops.nodes import Node
from levels.errors import NotFound
from levels.fabric import Fabric

Path = tuple[str, ...]
QUBITS, DEVICES = "qubits", "devices"
_QUBIT_DIR = re.compile(r"^q(0|[1-9][0-9]{0,3})$")
_STARTED_NS = time.time_ns()
QUBIT_FILES = ["calibration.json", "ctl", "neighbors", "status"]
TASK_FILES = ["ctl", "mapping", "result.json", "state.json", "triggers"]


def split_device(fabric: Fabric, path: Path) -> tuple[str, Path] | None:
    """(device, path inside its root) for /qubits/... and /devices/<name>/..., else None."""
    if path[:1] == (QUBITS,):
        return fabric.qubits.default_device, path[1:]
    if path[:1] == (DEVICES,) and len(path) >= 2:
        if path[1] == fabric.qubits.default_device or path[1] not in fabric.qubits.device_names():
            raise NotFound(f"no device {path[1]} under /devices (the default is /qubits)")
        return path[1], path[2:]
    return None


def other_devices(fabric: Fabric) -> list[str]:
    return [d for d in fabric.qubits.device_names() if d != fabric.qubits.default_device]


def _qubit(fabric: Fabric, device: str, name: str) -> int:
    match = _QUBIT_DIR.match(name)
    if not match or int(match.group(1)) >= fabric.qubits.num_qubits(device):
        raise NotFound(f"no qubit {name} on {device}")
    return int(match.group(1))


def resolve(fabric: Fabric, device: str, rest: Path, full: Path) -> Node:
    manager = fabric.qubits
    if not rest:
        return nodes.directory(_STARTED_NS)
    head = rest[0]
    if head == "ctl" and len(rest) == 1:
        return nodes.control_file("/".join(full), fabric.oplog,
                                  functools.partial(manager.control_device, device))
    if head == "tasks":
        if len(rest) == 1:
            return nodes.directory(time.time_ns())
        task = manager.task(rest[1])
        if task.device != device:
            raise NotFound(f"task {rest[1]} is on device {task.device}")
        if len(rest) == 2:
            return nodes.directory(task.created_ns)
        if len(rest) == 3:
            return _task_file(fabric, rest[1], rest[2], full)
        raise NotFound("/".join(full))
    q = _qubit(fabric, device, head)
    if len(rest) == 1:
        return nodes.directory(_STARTED_NS)
    if len(rest) == 2:
        leaf = rest[1]
        if leaf == "status":
            return nodes.live(lambda: manager.status(device, q) + "\n")
        if leaf == "calibration.json":
            text = json.dumps(manager.device(device).calibration_json(q), indent=2) + "\n"
            return nodes.constant(text.encode(), _STARTED_NS, timeout=nodes.IMMUTABLE_TIMEOUT)
        if leaf == "neighbors":
            text = "".join(f"q{n}\n" for n in manager.device(device).neighbors[q])
            return nodes.constant(text.encode(), _STARTED_NS, timeout=nodes.IMMUTABLE_TIMEOUT)
        if leaf == "ctl":
            return nodes.control_file("/".join(full), fabric.oplog,
                                      functools.partial(manager.control_qubit, device, q))
    raise NotFound("/".join(full))


def _task_file(fabric: Fabric, task: str, leaf: str, full: Path) -> Node:
    manager = fabric.qubits
    if leaf == "ctl":
        return nodes.control_file("/".join(full), fabric.oplog,
                                  functools.partial(fabric.coordinator.control_task, task))
    if leaf == "mapping":
        return nodes.live(lambda: manager.mapping_text(task))
    if leaf == "triggers":
        return nodes.live(lambda: manager.triggers_text(task))
    if leaf == "state.json":
        return nodes.live(lambda: json.dumps(manager.state_json(task), indent=2) + "\n")
    if leaf == "result.json":
        last = manager.last_run(task)
        if last is None:
            raise NotFound(f"task {task} has not run yet")
        return nodes.live(lambda: json.dumps(last, indent=2) + "\n")
    raise NotFound("/".join(full))


def list_names(fabric: Fabric, device: str, rest: Path) -> list[str]:
    manager = fabric.qubits
    if not rest:
        return ["ctl", "tasks", *(f"q{i}" for i in range(manager.num_qubits(device)))]
    if rest == ("tasks",):
        return manager.tasks_on(device)
    if len(rest) == 2 and rest[0] == "tasks":
        names = list(TASK_FILES)
        if manager.last_run(rest[1]) is None:
            names.remove("result.json")
        return names
    if len(rest) == 1:
        return list(QUBIT_FILES)
    raise NotFound("not a directory")

