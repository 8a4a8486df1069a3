"""The tree's grammar: which node a path is, and what a directory lists.

    /circuits/<name>/{latest.qasm, vN.qasm, vN.<view>, meta.json, stats.json, errors}
    /circuits/<name>/results/<run>.json
    /circuits/<name>/similar/<rank>-<other> -> ../../<other>/latest.qasm
    /circuits/<file>                        scratch; <name>.qasm imports circuit <name> and
                                            then stays an unlisted alias of its latest.qasm
    /search/<query>/<name> -> ../../circuits/<name>
    /.qfs/log
Anything else a tool creates inside a circuit directory is a scratch file.
"""

import contextlib
import json
import re
import time

import trio

from fsops import nodes, qubit_routes, state_routes, workflow_routes
from fsops.nodes import Node
from levels import check, tuning
from levels.circuits import PICTURE
from levels.errors import Invalid, NotFound, ReadOnly
from levels.fabric import Fabric
from levels.qasm import VIEW_FORMATS
from levels.similar import rank_similar

Path = tuple[str, ...]
CIRCUITS, SEARCH, OPS = "circuits", "search", ".qfs"
_VERSION_FILE = re.compile(r"^v([1-9][0-9]{0,9})\.([a-z0-9]+)$")
_STARTED_NS = time.time_ns()
# /.qfs files: name -> (fabric -> text renderer).
OPS_FILES = {
    "log": lambda fabric: fabric.oplog.text,
    "metrics": lambda fabric: lambda: fabric.metrics.exposition().decode(),
    "health": lambda fabric: lambda: json.dumps(check.health(fabric), indent=2) + "\n",
    "config": lambda fabric: lambda: json.dumps(fabric.config.effective(), indent=2) + "\n",
    "tuning": lambda fabric: lambda: json.dumps(tuning.report(fabric.metrics), indent=2) + "\n",
}


def import_name(filename: str) -> str | None:
    """`bell.qasm` written into /circuits/ imports circuit `bell`; dot files stay scratch."""
    if filename.endswith(".qasm") and not filename.startswith(".") and len(filename) > 5:
        return filename[: -len(".qasm")]
    return None


def picture_run(filename: str) -> str | None:
    """`<run>.png` in results/ is the histogram of `<run>.json`."""
    suffix = f".{PICTURE}"
    return filename[: -len(suffix)] if filename.endswith(suffix) else None


def parse_version_file(filename: str) -> tuple[int, str] | None:
    match = _VERSION_FILE.match(filename)
    return (int(match.group(1)), match.group(2)) if match else None


def commit_target(fabric: Fabric, path: Path) -> nodes.Commit | None:
    """What renaming a file onto `path` (or writing it) commits, or None for plain files."""
    if len(path) == 2 and path[0] == CIRCUITS and (name := import_name(path[1])):
        return nodes.commit_circuit_version(fabric, name, create=True)
    if len(path) == 3 and is_circuit_dir(fabric, path[:2]):
        if path[2] == "latest.qasm":
            return nodes.commit_circuit_version(fabric, path[1], create=False)
        if path[2] == "meta.json":
            return nodes.commit_meta(fabric, path[1])
    if len(path) == 4 and path[0] == CIRCUITS and path[2] == "results":
        fabric.circuits.get(path[1])
        return nodes.commit_result(fabric, path[1], path[3])
    return workflow_routes.submit_target(fabric, path)


def is_circuit_dir(fabric: Fabric, path: Path) -> bool:
    return len(path) == 2 and path[0] == CIRCUITS and fabric.circuits.mtime(path[1]) is not None


def scratch_dir(fabric: Fabric, path: Path) -> bool:
    """Directories where tools may keep scratch files: /circuits and each circuit."""
    return path == (CIRCUITS,) or is_circuit_dir(fabric, path)


def fabric_file(fabric: Fabric, path: Path) -> bool:
    """A name the fabric itself defines (not a scratch file) in a circuit directory."""
    if len(path) != 3 or path[0] != CIRCUITS:
        return False
    return path[2] in nodes.circuit_file_names(fabric, path[1]) or (
        parse_version_file(path[2]) is not None
    )


def scratch_node(fabric: Fabric, path: Path) -> Node:
    file = fabric.scratch.get(path[:-1], path[-1])
    commit = None
    if len(path) == 2 and (name := import_name(path[1])):
        commit = nodes.commit_circuit_version(fabric, name, create=True)
    node = nodes.scratch(file, commit)
    node.subject = path[1] if len(path) >= 3 else import_name(path[-1])
    if commit is not None:
        node.entry_timeout = 0.0  # an import's scratch file vanishes at release
    return node


async def resolve(fabric: Fabric, path: Path) -> Node:
    """The node at `path`, or NotFound."""
    depth = len(path)
    if depth == 0:
        return nodes.directory(_STARTED_NS)
    top = path[0]
    if top == CIRCUITS:
        return await _resolve_circuits(fabric, path)
    if top == SEARCH:
        if depth == 1:
            return nodes.directory(_STARTED_NS, perm=0o555)
        if depth == 2:
            fabric.search.validate(path[1])  # the search itself runs at opendir
            return nodes.directory(time.time_ns(), perm=0o555, timeout=0.0)
        if depth == 3 and path[2] in await search(fabric, path[1]):
            return nodes.symlink(f"../../{CIRCUITS}/{path[2]}", time.time_ns())
    if top == OPS:
        if depth == 1:
            return nodes.directory(_STARTED_NS, perm=0o555)
        if depth == 2 and path[1] in OPS_FILES:
            return nodes.live(OPS_FILES[path[1]](fabric))
    if top == state_routes.STATES:
        return state_routes.resolve(fabric, path)
    if top == workflow_routes.WORKFLOWS:
        return workflow_routes.resolve(fabric, path)
    if top == qubit_routes.DEVICES and depth == 1:
        return nodes.directory(_STARTED_NS, perm=0o555)
    device = qubit_routes.split_device(fabric, path)
    if device is not None:
        return qubit_routes.resolve(fabric, device[0], device[1], path)
    raise NotFound("/".join(path))


async def _resolve_circuits(fabric: Fabric, path: Path) -> Node:
    depth = len(path)
    if depth == 1:
        return nodes.directory(_STARTED_NS)
    name = path[1]
    mtime = fabric.circuits.mtime(name)
    if mtime is None:
        if depth != 2:
            raise NotFound(f"no circuit {name}")
        alias = import_name(name)
        # /circuits/<name>.qasm stays an unlisted alias of <name>/latest.qasm once
        # imported, so a second cp, or the kernel's cached entry, finds a file there.
        unclaimed = fabric.scratch.find(path[:1], name) is None
        if alias and unclaimed and fabric.circuits.mtime(alias) is not None:
            node = nodes.latest_file(fabric, alias)
            node.entry_timeout = 0.0
            return node
        return scratch_node(fabric, path)
    if depth == 2:
        return nodes.directory(mtime)
    leaf = path[2]
    if depth == 3:
        return await _resolve_circuit_file(fabric, name, leaf, mtime)
    if depth == 4 and leaf == "results":
        run = picture_run(path[3])
        if run is not None:
            return await nodes.result_picture(fabric, name, run)
        return nodes.result_file(fabric, name, path[3])
    if depth == 4 and leaf == "similar" and path[3] in dict(await similar(fabric, name)):
        return nodes.symlink(similar_target(path[3]), mtime)
    raise NotFound("/".join(path))


async def _resolve_circuit_file(fabric: Fabric, name: str, leaf: str, mtime: int) -> Node:
    if leaf == "latest.qasm":
        return nodes.latest_file(fabric, name)
    if leaf == "meta.json":
        return nodes.meta_file(fabric, name)
    if leaf == "stats.json":
        return nodes.stats_file(fabric, name)
    if leaf == "errors":
        node = nodes.live(lambda: fabric.oplog.subject_text(name))
        node.subject = name
        return node
    if leaf in ("results", "similar"):
        return nodes.directory(mtime, perm=0o755 if leaf == "results" else 0o555, timeout=0.0)
    version = parse_version_file(leaf)
    if version is not None:
        n, fmt = version
        if fmt == "qasm":
            return nodes.version_source(fabric, name, n)
        if fmt in (*VIEW_FORMATS, PICTURE):
            return await nodes.version_view(fabric, name, n, fmt)
    return scratch_node(fabric, (CIRCUITS, name, leaf))


async def list_dir(fabric: Fabric, path: Path) -> list[tuple[str, Node]]:
    """Every entry of a directory with its node (readdir returns attributes too)."""
    depth = len(path)
    if depth == 0:
        names = [CIRCUITS, SEARCH, OPS, qubit_routes.QUBITS, state_routes.STATES,
                 workflow_routes.WORKFLOWS]
        if qubit_routes.other_devices(fabric):
            names.append(qubit_routes.DEVICES)
    elif path == (CIRCUITS,):
        entries = [(n, nodes.directory(m)) for n, m in fabric.circuits.names_with_mtime()]
        return entries + _scratch_entries(fabric, path)
    elif path[0] == CIRCUITS and depth == 2:
        return await _list_circuit(fabric, path)
    elif path[0] == CIRCUITS and depth == 3 and path[2] == "results":
        entries = [(run, nodes.result_file(fabric, path[1], run))
                   for run, _size in fabric.circuits.results(path[1])]
        for run, _node in list(entries):
            stem = run[: -len(".json")]
            if fabric.circuits.has_result_picture(path[1], stem):  # listed once drawn
                entries.append((f"{stem}.{PICTURE}",
                                await nodes.result_picture(fabric, path[1], stem)))
        return entries
    elif path[0] == CIRCUITS and depth == 3 and path[2] == "similar":
        mtime = fabric.circuits.mtime(path[1]) or 0
        return [(entry, nodes.symlink(similar_target(entry), mtime))
                for entry, _score in await similar(fabric, path[1])]
    elif path == (SEARCH,):
        names = []
    elif path[0] == SEARCH and depth == 2:
        now = time.time_ns()
        return [(n, nodes.symlink(f"../../{CIRCUITS}/{n}", now))
                for n in await search(fabric, path[1])]
    elif path == (OPS,):
        names = list(OPS_FILES)
    elif path[0] == state_routes.STATES and depth <= 2:
        names = state_routes.list_names(fabric, path)
    elif path[0] == workflow_routes.WORKFLOWS and depth <= 2:
        names = workflow_routes.list_names(fabric, path)
    elif path == (qubit_routes.DEVICES,):
        names = qubit_routes.other_devices(fabric)
    elif (device := qubit_routes.split_device(fabric, path)) is not None:
        names = qubit_routes.list_names(fabric, *device)
    else:
        raise NotFound("/".join(path))
    return [(n, await resolve(fabric, (*path, n))) for n in names]


async def _list_circuit(fabric: Fabric, path: Path) -> list[tuple[str, Node]]:
    name = path[1]
    # Views are rendered to know their exact size: do them all in one worker thread.
    await trio.to_thread.run_sync(_render_views, fabric, name)
    entries = []
    for leaf in nodes.circuit_file_names(fabric, name):
        try:
            entries.append((leaf, await _resolve_circuit_file(fabric, name, leaf, 0)))
        except Invalid:
            continue  # a view this circuit cannot be expressed in: not listed
    return entries + _scratch_entries(fabric, path)


def _render_views(fabric: Fabric, name: str) -> None:
    for version in fabric.circuits.get(name).versions:
        for fmt in VIEW_FORMATS:
            with contextlib.suppress(Invalid):
                fabric.circuits.view(name, version.n, fmt)


def _scratch_entries(fabric: Fabric, path: Path) -> list[tuple[str, Node]]:
    return [(n, scratch_node(fabric, (*path, n))) for n in fabric.scratch.names(path)]


async def search(fabric: Fabric, query: str) -> list[str]:
    with fabric.metrics.search_latency_seconds.time():
        return await trio.to_thread.run_sync(fabric.search.search, query)


def similar_target(entry: str) -> str:
    """`NN-<other>` links to the other circuit's latest.qasm, not to its directory: a link
    to a sibling directory makes find -L, grep -R and diff -r walk an exponential tree."""
    return f"../../{entry.split('-', 1)[1]}/latest.qasm"


async def similar(fabric: Fabric, name: str) -> list[tuple[str, float]]:
    """Ranked `<rank>-<name>` entries of circuits shaped like `name`'s latest version."""
    circuit = fabric.circuits.get(name)
    if circuit.latest is None:
        return []
    target = circuit.latest.stats

    def rank() -> list[tuple[str, float]]:
        candidates = (
            (c.name, c.latest.stats)
            for c in fabric.circuits.all_circuits()
            if c.latest is not None and c.name != name
        )
        return rank_similar(target, candidates, fabric.config.circuit_fs.similar_result_limit)

    ranked = await trio.to_thread.run_sync(rank)
    return [(f"{i:02d}-{n}", score) for i, (n, score) in enumerate(ranked, 1)]


def refuse_write(path: Path) -> ReadOnly:
    return ReadOnly(f"{'/'.join(path)} is read-only (versions, views and stats are immutable)")
