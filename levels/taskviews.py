"""What a task's files show (/qubits/tasks/<T>/mapping, triggers, state.json), rendered
from its record and, when it has one, its live state; reading never builds a live state."""

from typing import Any

from levels.livetasks import Live
from levels.tasks import Task

TOP_PROBABILITIES = 8


def mapping_text(task: Task) -> str:
    return "".join(f"q{i} q{p}\n" for i, p in enumerate(task.qubits))


def triggers_text(task: Task) -> str:
    return "".join(t.describe(task.qubits) + "\n" for t in task.triggers)


def state_json(task: Task, live: Live | None, here: str = "") -> dict[str, Any]:
    """`here`: this host's name on a shared metadata store (a task of another host shows
    where its live state is, not this host's nothing)."""
    document: dict[str, Any] = {
        "task": task.name, "device": task.device, "owner_uid": task.owner,
        "qubits": [f"q{p}" for p in task.qubits], "buffers": [f"q{p}" for p in task.buffers],
        "topology": task.topology, "isolate": task.isolate, "score": round(task.score, 6),
        "parameters": task.parameters, "triggers": len(task.triggers),
    }
    if task.host:
        document["host"] = task.host
    if live is None and task.host != here:
        document["live"] = {"state": f"on host {task.host} (live states stay on their host)"}
        return document
    if live is None:
        document["live"] = {"state": "|0...0> (untouched since allocation or remount)"}
        return document
    probabilities = abs(live.state.vector) ** 2
    top = sorted(enumerate(probabilities), key=lambda kv: -kv[1])[:TOP_PROBABILITIES]
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
        document["last_run"] = {k: live.last_run[k] for k in ("run", "circuit", "version",
                                                               "counts")}
    return document
