"""What one host does when another host changes the shared fabric (the change feed of
levels/store/feed.py): its derived state follows the metadata store.

- a circuit changed or removed: this host's Whoosh index takes the new document (or drops
  it); after a gap in the feed the index is rebuilt from the store;
- a task allocated, changed or released: this host's table of tasks (what /qubits shows and
  what a local allocation starts from) takes the stored record.

Live task state is not shared: it stays on the host that allocated the task.
The FUSE layer subscribes too, to drop the kernel's cached entries (fsops).
"""

from levels.circuits import CircuitStore
from levels.errors import NotFound
from levels.qubits import LiveQubitManager, Task
from levels.search import SearchIndex
from levels.store.meta import MetaStore


def paths_of(change: tuple[str, bytes] | None) -> list[tuple[str, ...]]:
    """Where a change shows in the mounted tree: what the kernel must stop caching."""
    if change is None:
        # Changes were missed (trimmed while this host was away): all of /circuits, whose
        # names the kernel keeps for 60 s, goes; 1 s timeouts bound what is left.
        return [("circuits",)]
    table, key = change
    where = {"circuits": ("circuits",), "checkpoints": ("states",),
             "tasks": ("qubits", "tasks")}.get(table)
    return [] if where is None else [(*where, key.decode())]


class Follower:
    def __init__(self, meta: MetaStore, circuits: CircuitStore, search: SearchIndex,
                 qubits: LiveQubitManager) -> None:
        self._meta = meta
        self._circuits = circuits
        self._search = search
        self._qubits = qubits

    def __call__(self, change: tuple[str, bytes] | None) -> None:
        if change is None:
            self._reload_tasks()
            self._search.rebuild_now(
                lambda: (c.search_document() for c in self._circuits.all_circuits()))
            return
        table, key = change
        if table == "circuits":
            self._circuit(key.decode())
        elif table == "tasks":
            self._task(key.decode())

    def _circuit(self, name: str) -> None:
        try:
            document = self._circuits.get(name).search_document()
        except NotFound:
            document = None
        self._search.submit(name, document)

    def _task(self, name: str) -> None:
        with self._meta.reading() as txn:
            raw = txn.get("tasks", name.encode())
        if raw is None:
            self._qubits.tasks.pop(name, None)
        else:
            self._qubits.tasks[name] = Task.from_json(raw)

    def _reload_tasks(self) -> None:
        with self._meta.reading() as txn:
            stored = {k.decode(): Task.from_json(v) for k, v in txn.scan("tasks")}
        self._qubits.tasks = stored
