"""A workflow's record, persisted in the metadata table `workflows` (key: the workflow
name; value: the record as JSON, the same keys since the first release), and the files
rendered from it (/workflows/<name>.yaml, status, result.json)."""

import dataclasses
import json
import time
from typing import Any, Literal, TypedDict

from levels.workflowdef import stage_names

TABLE = "workflows"
Status = Literal["pending", "running", "done", "failed", "cancelled", "interrupted"]


class StageResult(TypedDict, total=False):
    """One stage's entry of result.json (the keys a stage produced, no others)."""

    circuit: str
    counts: dict[str, int]
    checkpoint: str
    checkpoint_fidelity: float


@dataclasses.dataclass
class WorkflowRecord:
    name: str
    definition: str  # the file as written (UTF-8, validated)
    status: Status
    owner: int
    stages: list[str]  # stage names, in order
    completed: list[str] = dataclasses.field(default_factory=list)
    results: dict[str, StageResult] = dataclasses.field(default_factory=dict)
    reason: str = ""  # why it failed, was cancelled or interrupted
    updated: float = dataclasses.field(default_factory=time.time)  # seconds since the epoch

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "WorkflowRecord":
        """A stored record; one kept before `stages` was recorded takes them from its
        definition."""
        data = json.loads(raw)
        if "stages" not in data:
            data["stages"] = stage_names(data["name"], data["definition"])
        return cls(**data)

    def touch(self, status: Status, reason: str = "") -> None:
        self.status, self.reason, self.updated = status, reason, time.time()


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A workflow's files as served: made once per change of its record, never per read."""

    definition: bytes
    status: str
    result: str
    updated_ns: int


def render(record: WorkflowRecord) -> Rendered:
    completed = set(record.completed)
    lines = [record.status + (f": {record.reason}" if record.reason else "")]
    lines += [f"{s} {'done' if s in completed else 'pending'}" for s in record.stages]
    result: dict[str, Any] = {"workflow": record.name, "status": record.status,
                              "reason": record.reason, "stages": record.results}
    return Rendered(record.definition.encode(), "\n".join(lines) + "\n",
                    json.dumps(result, indent=2) + "\n", int(record.updated * 1e9))
