"""The root of the tree and the walk: `resolve(fabric, path)` is how any path becomes the
one Entry that implements it. Each directory kind knows the names under it, so the shapes
of paths live in levels/vfs and nowhere else.

    /circuits   levels/vfs/circuits.py      /states      levels/vfs/states.py
    /search     SearchDir (below)           /workflows   levels/vfs/workflows.py
    /.qfs       OpsDir (below)              /qubits, /devices   levels/vfs/qubits.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from levels import check, tuning
from levels.errors import NotFound
from levels.vfs.circuits import CIRCUITS, CircuitsDir
from levels.vfs.entry import (
    DIR_TIMEOUT,
    STARTED_NS,
    Dir,
    Entry,
    Listing,
    Live,
    Names,
    Path,
    Symlink,
    Uniform,
    directory,
    link,
)
from levels.vfs.qubits import DEVICES, QUBITS, DevicesDir, QubitsDir, other_devices
from levels.vfs.states import STATES, StatesDir
from levels.vfs.workflows import WORKFLOWS, WorkflowsDir

if TYPE_CHECKING:
    from levels.fabric import Fabric

SEARCH, OPS = "search", ".qfs"
# /.qfs files: name -> (fabric -> text renderer).
OPS_FILES: dict[str, Callable[[Fabric], Callable[[], str]]] = {
    "log": lambda fabric: fabric.oplog.text,
    "metrics": lambda fabric: lambda: fabric.metrics.exposition().decode(),
    "health": lambda fabric: lambda: json.dumps(check.health(fabric), indent=2) + "\n",
    "config": lambda fabric: lambda: json.dumps(fabric.config.effective(), indent=2) + "\n",
    "tuning": lambda fabric: lambda: json.dumps(tuning.report(fabric.metrics), indent=2) + "\n",
}


class RootDir(Dir):
    """/: the levels' trees; /devices only where more than one device is configured."""

    def __init__(self, fabric: Fabric) -> None:
        super().__init__(fabric, (), directory(STARTED_NS))

    def names(self) -> Names:
        names = [CIRCUITS, SEARCH, OPS, QUBITS, STATES, WORKFLOWS]
        return [*names, DEVICES] if other_devices(self.fabric) else names

    async def lookup(self, name: str) -> Entry:
        fabric, path = self.fabric, self.child(name)
        if name == CIRCUITS:
            return CircuitsDir(fabric, path)
        if name == SEARCH:
            return SearchDir(fabric, path, directory(STARTED_NS, perm=0o555))
        if name == OPS:
            return OpsDir(fabric, path, directory(STARTED_NS, perm=0o555))
        if name == QUBITS:
            return QubitsDir(fabric, path, fabric.qubits.default_device)
        if name == DEVICES:
            return DevicesDir(fabric, path)
        if name == STATES:
            return StatesDir(fabric, path)
        if name == WORKFLOWS:
            return WorkflowsDir(fabric, path)
        return await super().lookup(name)


class SearchDir(Dir):
    """/search: `ls` lists no query; /search/<query>/ holds the matching circuits (EINVAL
    for a query Whoosh cannot parse). Unlisted, so no link leads into a directory that
    contains it."""

    async def lookup(self, name: str) -> Entry:
        self.fabric.search.validate(name)  # the search itself runs at opendir
        return QueryDir(self.fabric, self.child(name), directory(time.time_ns(), perm=0o555))


class QueryDir(Dir):
    """/search/<query>/<name> -> ../../circuits/<name>, a snapshot taken at opendir. The
    kernel keeps each hit's name and attributes for a second (`ls -l` of 10,000 hits then
    sends a READLINK per hit and no LOOKUP or GETATTR): a name that stops matching is
    gone from the next listing at once, and from a lookup within that second."""

    async def lookup(self, name: str) -> Entry:
        hit = self.fabric.search.cached_hit(self.path[-1], name)
        if hit is None:
            hit = name in await self.search()
        if not hit:
            raise NotFound(f"{self.where()}/{name}")
        return self._link(name)

    async def list(self) -> Listing:
        now = time.time_ns()
        return Uniform([(name, now) for name in await self.search()],
                       link(_circuit_link(""), now, DIR_TIMEOUT),
                       size_of=lambda name: _LINK_BYTES + len(name.encode()))

    def _link(self, name: str) -> Entry:
        return Symlink(self.fabric, self.child(name), _circuit_link(name), time.time_ns(),
                       DIR_TIMEOUT)

    async def search(self) -> Names:
        fabric = self.fabric
        with fabric.metrics.search_latency_seconds.time():
            return await trio.to_thread.run_sync(fabric.search.search, self.path[-1])


def _circuit_link(name: str) -> str:
    return f"../../{CIRCUITS}/{name}"


_LINK_BYTES = len(_circuit_link("").encode())  # a hit's link is these and its name's


class OpsDir(Dir):
    """/.qfs: log, metrics, health, config, tuning (live, read-only)."""

    def names(self) -> Names:
        return list(OPS_FILES)

    async def lookup(self, name: str) -> Entry:
        if name not in OPS_FILES:
            return await super().lookup(name)
        return Live(self.fabric, self.child(name), OPS_FILES[name](self.fabric))


async def resolve(fabric: Fabric, path: Path) -> Entry:
    """The entry at `path`, or NotFound."""
    entry: Entry = RootDir(fabric)
    for name in path:
        if not isinstance(entry, Dir):
            raise NotFound("/".join(path))
        entry = await entry.lookup(name)
    return entry


async def rename(fabric: Fabric, src: Path, dst: Path, uid: int) -> None:
    """rename(2): the target directory decides what the moved entry becomes."""
    entry = await resolve(fabric, src)
    parent = await resolve(fabric, dst[:-1])
    if not isinstance(parent, Dir):
        raise NotFound("/".join(dst[:-1]))
    await parent.rename_into(dst[-1], entry, uid)


async def directory_at(fabric: Fabric, path: Path) -> Dir:
    """The directory at `path` (NotFound when it is missing or not a directory)."""
    entry = await resolve(fabric, path)
    if not isinstance(entry, Dir):
        raise NotFound(f"/{'/'.join(path)} is not a directory")
    return entry


def subject_of(path: Path) -> str | None:
    """The circuit a refusal at `path` is reported under (its errors file), if any."""
    return path[1] if len(path) >= 2 and path[0] == CIRCUITS else None
