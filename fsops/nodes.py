"""What each kind of path is: its attributes, its content and what a write to it commits.

Nodes are cheap views over levels/, made per request by fsops/routes.py. Slow work
(parsing, drawing, searching) goes to a worker thread so the mount stays responsive.
"""

import collections
import dataclasses
import hashlib
import os
import stat
import time
from collections.abc import Awaitable, Callable

import trio

from levels.circuits import PICTURE, CircuitStore
from levels.devices import DeviceSpec
from levels.fabric import Fabric
from levels.qasm import VIEW_FORMATS
from levels.scratch import ScratchFile

DIR, FILE, LINK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK

# Immutable content may be cached by the kernel for long; mutable files are re-asked.
IMMUTABLE_TIMEOUT = 300.0
DIR_TIMEOUT = 1.0

# A commit of written bytes: (content, uid of the writer) -> done, or a domain error.
Commit = Callable[[bytes, int], Awaitable[None]]
# A control command: (line, uid of the writer) -> the reply readable from the file.
Control = Callable[[str, int], Awaitable[str]]
# A check of the bytes written so far, before close (an imported .npy's header): True once
# satisfied, False while more bytes are needed; raising a refusal fails that write().
Screen = Callable[[bytearray], bool]


@dataclasses.dataclass
class Node:
    """One path's answer to getattr, open and readdir."""

    kind: int
    perm: int
    mtime_ns: int
    size: int = 0
    attr_timeout: float = 0.0
    entry_timeout: float = DIR_TIMEOUT  # 0 for names that may vanish behind the kernel's back
    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)
    # Files: where the bytes come from, and (for files a write may change) where they go.
    read: Callable[[], Awaitable[bytes]] | None = None
    commit: Commit | None = None
    live: bool = False  # rendered at each resolve (logs, status): direct I/O, see live()
    content: bytes = b""  # a live node's render, whose changes move its mtime
    scratch: ScratchFile | None = None
    link_target: str = ""
    subject: str | None = None  # the circuit a refusal is reported under
    control: Control | None = None  # control files: each write() is one command
    screen: Screen | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR


def directory(mtime_ns: int, perm: int = 0o755, timeout: float = DIR_TIMEOUT) -> Node:
    return Node(DIR, perm, mtime_ns, attr_timeout=timeout)


def constant(data: bytes, mtime_ns: int, perm: int = 0o444, timeout: float = 0.0) -> Node:
    async def read() -> bytes:
        return data

    return Node(FILE, perm, mtime_ns, size=len(data), attr_timeout=timeout, read=read)


def live(render: Callable[[], str], perm: int = 0o444) -> Node:
    """Content that changes by itself (logs, status): rendered at each lookup, getattr and
    open, so st_size is the length of that render and a handle reads the render of its own
    open. Direct I/O keeps the page cache from serving an older render; the mtime is the
    time the content was last seen to change (ChangeClock), so tar and rsync see a stable
    file while nothing changes."""
    data = render().encode()
    node = constant(data, 0, perm)
    node.live, node.content = True, data
    return node


class ChangeClock:
    """mtimes of live files: when each path's render was last seen to differ (bounded)."""

    def __init__(self, capacity: int = 65536) -> None:
        self._seen: collections.OrderedDict[tuple[str, ...], tuple[bytes, int]] = (
            collections.OrderedDict()
        )
        self._capacity = capacity

    def mtime(self, path: tuple[str, ...], content: bytes) -> int:
        digest = hashlib.blake2b(content, digest_size=16).digest()
        seen = self._seen.pop(path, None)
        if seen is None or seen[0] != digest:
            seen = (digest, time.time_ns())
        self._seen[path] = seen
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return seen[1]


def control_file(key: str, oplog, control: Control) -> Node:
    """A sysfs-style control file: writes are commands, reads give the last reply."""
    node = live(lambda: oplog.reply(key), perm=0o666)
    node.control = control
    return node


def symlink(target: str, mtime_ns: int) -> Node:
    return Node(
        LINK, 0o777, mtime_ns, size=len(target.encode()), link_target=target, entry_timeout=0.0
    )


def scratch(file: ScratchFile, commit: Commit | None = None) -> Node:
    async def read() -> bytes:
        return bytes(file.data)

    return Node(
        FILE, file.mode & 0o7777, file.mtime_ns, size=len(file.data), uid=file.uid,
        gid=file.gid, read=read, commit=commit, scratch=file,
    )


# -- circuits ------------------------------------------------------------------------------


def commit_circuit_version(fabric: Fabric, name: str, create: bool,
                           written_as: str = "qasm") -> Commit:
    """A write's bytes become the next version of circuit `name` after Qiskit accepts them
    (`written_as`: qasm, or an SDK format such as quil, levels.sdkformats)."""

    async def commit(data: bytes, uid: int) -> None:
        with fabric.metrics.artifact_store_seconds.time():
            prepared = await trio.to_thread.run_sync(fabric.circuits.prepare_version, data,
                                                     written_as)
            fabric.circuits.commit_version(name, prepared, create=create)

    return commit


def commit_import(fabric: Fabric, name: str, written_as: str = "qasm") -> Commit:
    """`<name>.qasm` (or .quil, ...) written into /circuits: a version of circuit `name`,
    made if need be; an empty file (`touch`) makes the circuit with no version yet, as
    mkdir does."""
    versions = commit_circuit_version(fabric, name, create=True, written_as=written_as)

    async def commit(data: bytes, uid: int) -> None:
        if data:
            await versions(data, uid)
        elif fabric.circuits.mtime(name) is None:
            fabric.circuits.create(name)

    return commit


def commit_restored_version(fabric: Fabric, name: str, n: int) -> Commit:
    """Bytes written as vN.qasm (a backup written back) become version n itself."""

    async def commit(data: bytes, uid: int) -> None:
        if fabric.circuits.restore_needed(name, n, data):
            prepared = await trio.to_thread.run_sync(fabric.circuits.prepare_version, data)
            fabric.circuits.restore_version(name, n, prepared)

    return commit


def latest_file(fabric: Fabric, name: str) -> Node:
    circuit = fabric.circuits.get(name)
    latest = circuit.latest

    async def read() -> bytes:
        return fabric.circuits.source(name)

    return Node(
        FILE, 0o644, latest.created_ns if latest else circuit.created_ns,
        size=latest.size if latest else 0, read=read,
        commit=commit_circuit_version(fabric, name, create=False), subject=name,
    )


def version_source(fabric: Fabric, name: str, n: int) -> Node:
    version = fabric.circuits.get(name).version(n)

    async def read() -> bytes:
        return fabric.circuits.source(name, n)

    return Node(
        FILE, 0o444, version.created_ns, size=version.size, attr_timeout=IMMUTABLE_TIMEOUT,
        read=read, commit=commit_restored_version(fabric, name, n), subject=name,
    )


async def version_view(fabric: Fabric, name: str, n: int, fmt: str) -> Node:
    """A format view; rendered now (in a thread) because st_size must be exact."""
    version = fabric.circuits.get(name).version(n)
    data = await trio.to_thread.run_sync(fabric.circuits.view, name, n, fmt)
    node = constant(data, version.created_ns, timeout=IMMUTABLE_TIMEOUT)
    node.subject = name
    return node


def commit_meta(fabric: Fabric, name: str) -> Commit:
    async def commit(data: bytes, uid: int) -> None:
        fabric.circuits.set_meta(name, data)

    return commit


def meta_file(fabric: Fabric, name: str) -> Node:
    circuit = fabric.circuits.get(name)
    node = constant(CircuitStore.meta_json(circuit), circuit.mtime_ns, perm=0o644)
    node.commit = commit_meta(fabric, name)
    node.subject = name
    return node


async def stats_file(fabric: Fabric, name: str) -> Node:
    """stats.json; each version's equivalence to the one before is decided now (workers,
    cached), so that st_size is exact."""
    circuit = fabric.circuits.get(name)
    history = await trio.to_thread.run_sync(fabric.circuits.history, name)
    node = constant(CircuitStore.stats_json(circuit, history), circuit.mtime_ns)
    node.subject = name
    return node


async def version_diff(fabric: Fabric, name: str, n: int) -> Node:
    """vN.diff, made now (in a worker) because st_size must be exact."""
    version = fabric.circuits.get(name).version(n)
    data = await trio.to_thread.run_sync(fabric.circuits.diff, name, n)
    node = constant(data, version.created_ns, timeout=IMMUTABLE_TIMEOUT)
    node.subject = name
    return node


async def compiled_file(fabric: Fabric, name: str, n: int, device: DeviceSpec,
                        fmt: str) -> Node:
    """compiled/<device>/vN.<fmt>, compiled now (in a worker) because st_size must be exact.
    Re-asked at each lookup: meta.json's optimization_level may change what it holds."""
    circuit = fabric.circuits.get(name)
    mtime = max(circuit.version(n).created_ns, circuit.mtime_ns)
    data = await trio.to_thread.run_sync(fabric.circuits.compiled, name, n, device, fmt)
    node = constant(data, mtime)
    node.subject = name
    return node


def result_file(fabric: Fabric, name: str, run: str) -> Node:
    data = fabric.circuits.result(name, run)
    node = constant(data, fabric.circuits.get(name).mtime_ns, perm=0o644)
    node.commit = commit_result(fabric, name, run)
    node.subject = name
    return node


def commit_result(fabric: Fabric, name: str, run: str) -> Commit:
    async def commit(data: bytes, uid: int) -> None:
        fabric.circuits.put_result(name, run, data)

    return commit


def circuit_file_names(fabric: Fabric, name: str) -> list[str]:
    """The fabric's own entries of a circuit directory (scratch files come on top)."""
    circuit = fabric.circuits.get(name)
    names = ["latest.qasm", "meta.json", "stats.json", "errors", "results", "similar"]
    kept = {version.n for version in circuit.versions}
    for version in circuit.versions:
        names.append(f"v{version.n}.qasm")
        if version.n - 1 in kept:
            names.append(f"v{version.n}.diff")
        names.extend(f"v{version.n}.{fmt}" for fmt in VIEW_FORMATS)
        if fabric.circuits.has_picture(name, version.n):  # pictures: listed once drawn
            names.append(f"v{version.n}.{PICTURE}")
    return names


async def result_picture(fabric: Fabric, name: str, run: str) -> Node:
    data = await trio.to_thread.run_sync(fabric.circuits.result_picture, name, run)
    node = constant(data, fabric.circuits.get(name).mtime_ns)
    node.subject = name
    return node
