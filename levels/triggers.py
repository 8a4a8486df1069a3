"""Feed-forward triggers on a task's qubits: registered and removed through a qubit's ctl
(naming physical qubits), kept in the task record in logical numbering, so that they
survive a migration and compile into a run unchanged (feedforward.py fires them)."""

import dataclasses

from levels import ctl
from levels.errors import Busy, NotFound
from levels.feedforward import Trigger
from levels.livestate import gate_matrix
from levels.tasks import Task, TaskTable


def add(table: TaskTable, task: Task, physical: int, command: ctl.On) -> Trigger:
    """Register `command` on the task's qubit `physical`; every gate is checked first."""
    actions = tuple(_to_logical(task, a) for a in command.actions)
    for action in actions:
        if isinstance(action, ctl.GateAction):
            gate_matrix(action.name, action.params, len(action.qubits))  # validates
    trigger = Trigger(task.next_trigger, task.logical(physical), command.outcome, actions,
                      command.prio)
    table.save(dataclasses.replace(task, triggers=[*task.triggers, trigger],
                                   next_trigger=task.next_trigger + 1))
    return trigger


def remove(table: TaskTable, task: Task, physical: int, command: ctl.Off) -> int:
    """Remove one trigger of the qubit `physical` (or all of them); how many went."""
    logical = task.logical(physical)
    keep = [t for t in task.triggers if t.qubit != logical or (
        command.trigger_id is not None and t.id != command.trigger_id)]
    removed = len(task.triggers) - len(keep)
    if command.trigger_id is not None and removed == 0:
        raise NotFound(f"no trigger {command.trigger_id} on q{physical}")
    table.save(dataclasses.replace(task, triggers=keep))
    return removed


def without_qubit(task: Task, physical: int) -> list[Trigger]:
    """The task's triggers renumbered for its register less `physical`; Busy while a
    trigger watches or acts on that qubit."""
    logical = task.qubits.index(physical)
    if any(t.qubit == logical or any(
            logical in getattr(a, "qubits", ()) for a in t.actions) for t in task.triggers):
        raise Busy(f"q{physical} has triggers in task {task.name}; remove them first")
    renumber = {old: new for new, old in enumerate(
        i for i, q in enumerate(task.qubits) if q != physical)}
    return [_renumbered(t, renumber) for t in task.triggers]


def _to_logical(task: Task, action: ctl.Action) -> ctl.Action:
    if isinstance(action, ctl.GateAction):
        return dataclasses.replace(action, qubits=tuple(task.logical(q) for q in action.qubits))
    return action


def _renumbered(trigger: Trigger, renumber: dict[int, int]) -> Trigger:
    actions = tuple(
        dataclasses.replace(a, qubits=tuple(renumber[q] for q in a.qubits))
        if isinstance(a, ctl.GateAction) else a for a in trigger.actions)
    return dataclasses.replace(trigger, qubit=renumber[trigger.qubit], actions=actions)
