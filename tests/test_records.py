"""Typed records read what earlier releases stored, and write the same JSON: a task record
(table `tasks`) and a workflow record (table `workflows`), including a workflow record kept
before its stage names were recorded."""

import json

from levels.ctl import GateAction, SetAction, StopAction
from levels.feedforward import Trigger
from levels.tasks import Task
from levels.workflowrecord import WorkflowRecord, render

# As LiveQubitManager wrote them before the records were typed (field for field).
STORED_TASK = {
    "name": "vqe", "device": "eagle", "owner": 1000, "qubits": [3, 4, 5], "buffers": [2, 6],
    "topology": "linear", "isolate": "spatial", "score": 0.97, "created_ns": 1_700_000_000,
    "triggers": [{"id": 1, "qubit": 0, "outcome": 1, "prio": 2, "actions": [
        {"gate": "rx", "qubits": [2], "params": [0.5]}, {"set": "theta", "value": 0.25},
        {"stop": True}]}],
    "next_trigger": 2, "parameters": {"theta": 1.5}, "last_run": "bell/run-1.json",
}
DEFINITION = "stages:\n  - {name: first, circuit: ghz, checkpoint: true}\n  - {circuit: ghz}\n"
STORED_WORKFLOW = {
    "name": "w", "definition": DEFINITION, "status": "done", "owner": 1000,
    "stages": ["first", "stage2"], "completed": ["first", "stage2"],
    "results": {"first": {"circuit": "ghz", "checkpoint": "w-first",
                          "checkpoint_fidelity": 1.0},
                "stage2": {"circuit": "ghz", "counts": {"000": 3, "111": 5}}},
    "reason": "", "updated": 1_700_000_000.5,
}


def test_a_stored_task_loads_typed_and_is_written_back_the_same():
    raw = json.dumps(STORED_TASK).encode()
    task = Task.from_json(raw)
    assert task.triggers == [Trigger(1, 0, 1, (GateAction("rx", (2,), (0.5,)),
                                               SetAction("theta", 0.25), StopAction()), 2)]
    assert task.logical(5) == 2
    written = json.loads(task.to_json())  # fields added since take their defaults
    assert {key: written[key] for key in STORED_TASK} == STORED_TASK


def test_a_stored_workflow_loads_typed_and_is_written_back_the_same():
    record = WorkflowRecord.from_json(json.dumps(STORED_WORKFLOW).encode())
    assert record.status == "done" and record.results["stage2"]["counts"]["111"] == 5
    assert json.loads(record.to_json()) == STORED_WORKFLOW
    rendered = render(record)
    assert rendered.status == "done\nfirst done\nstage2 done\n"
    assert json.loads(rendered.result)["stages"] == STORED_WORKFLOW["results"]
    assert rendered.updated_ns == 1_700_000_000_500_000_000


def test_a_workflow_kept_before_stages_were_recorded_takes_them_from_its_definition():
    old = {k: v for k, v in STORED_WORKFLOW.items() if k != "stages"}
    record = WorkflowRecord.from_json(json.dumps(old).encode())
    assert record.stages == ["first", "stage2"]
    assert json.loads(record.to_json()) == STORED_WORKFLOW
    unreadable = {**old, "definition": "stages: 3\n"}  # refused by today's rules
    assert WorkflowRecord.from_json(json.dumps(unreadable).encode()).stages == []


def test_control_replies_are_kept_for_a_bounded_number_of_control_files():
    """Every task's ctl ever written left its reply behind (a key per task, forever)."""
    from levels.oplog import MAX_REPLIES, OpLog

    log = OpLog()
    for i in range(MAX_REPLIES + 10):
        log.set_reply(f"qubits/tasks/t{i}/ctl", f"ok: {i}")
    assert log.reply("qubits/tasks/t0/ctl") == ""  # the least recently written, forgotten
    assert log.reply(f"qubits/tasks/t{MAX_REPLIES + 9}/ctl") == f"ok: {MAX_REPLIES + 9}\n"
