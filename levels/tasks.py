"""Task records: which physical qubits a task holds, its triggers and parameters, persisted
in the metadata table `tasks` (key: the task name; value: the record as JSON). Live
states are not persisted (a remount starts every task in |0...0>, as a power cycle would).
"""

import dataclasses
import json
from collections.abc import Callable

from levels.errors import Busy, Invalid, NotFound, PermissionDenied
from levels.feedforward import Trigger
from levels.store.meta import MetaStore

TABLE = "tasks"


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
    # The host whose memory holds the live state ("" on the embedded store: this one).
    host: str = ""

    def to_json(self) -> bytes:
        """The record as JSON: its fields as they are (dataclasses.asdict deep-copied them,
        triggers included, and was half of a ctl `set`), the triggers by their own to_json."""
        return json.dumps({**vars(self), "triggers": [t.to_json() for t in self.triggers]}
                          ).encode()

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

    def check_owner(self, uid: int) -> None:
        """Only the task's owner (or root) may command it."""
        if uid not in (0, self.owner):
            raise PermissionDenied(f"task {self.name} belongs to uid {self.owner}, not {uid}")


class TaskTable:
    """The task records, all held in memory (a few per user) and written through."""

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta
        self.host: str = getattr(meta, "host", "")  # a shared store names this host
        self.tasks: dict[str, Task] = {}
        with meta.reading() as txn:
            for _key, raw in txn.scan(TABLE):
                task = Task.from_json(raw)
                self.tasks[task.name] = task

    def get(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotFound(f"no task {name}") from None

    def check_here(self, task: Task) -> None:
        """A live command runs where the live state is: on another host it is refused,
        naming that host (README "Scale-out": refused, not forwarded)."""
        if task.host != self.host:
            raise Busy(f"task {task.name} lives on host {task.host}: its live state is "
                       "there, so write its ctl on that host")

    def on(self, device: str) -> list[str]:
        return sorted(t.name for t in self.tasks.values() if t.device == device)

    def save(self, task: Task) -> None:
        with self._meta.writing() as txn:
            txn.put(TABLE, task.name.encode(), task.to_json())
        self.tasks[task.name] = task

    def save_chosen(self, choose: Callable[[], Task]) -> Task:
        """Run `choose` over the tasks as stored and save the task it returns, in one write
        transaction: write transactions take turns on every host sharing the metadata store
        (levels/store/pg.py), so two hosts never give one qubit to two tasks."""
        with self._meta.writing() as txn:
            self.tasks = {k.decode(): Task.from_json(v) for k, v in txn.scan(TABLE)}
            task = choose()
            txn.put(TABLE, task.name.encode(), task.to_json())
        self.tasks[task.name] = task
        return task

    def delete(self, name: str) -> None:
        with self._meta.writing() as txn:
            txn.delete(TABLE, name.encode())
        self.tasks.pop(name, None)
