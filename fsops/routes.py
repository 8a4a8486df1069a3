"""The tree's grammar: which node a path is, and what a directory lists.

    /circuits/<name>/{latest.qasm, vN.qasm, vN.<view>, meta.json, stats.json, errors}
    /circuits/<name>/results/<run>.json
    /circuits/<name>/similar/<rank>-<other> -> ../../<other>/latest.qasm
    /circuits/<name>/compiled/<device>/{vN.qasm, vN.qpy, vN.report.json}   (unlisted)
    /circuits/<name>.qasm                   imports circuit <name>, then stays an unlisted
                                            alias of its latest.qasm
    /search/<query>/<name> -> ../../circuits/<name>
    /.qfs/log
In /circuits, a circuit and its results/, tools may create scratch files under the names
they give temporaries (levels/scratch.py); any other file the fabric would not keep is
refused at create(). A circuit made by mkdir shows only what was written into it until it
is first listed (levels/circuits.py, Filling), so that a backup can be written back.
"""

import contextlib
import json
import re
import time

import trio

from fsops import nodes, qubit_routes, state_routes, workflow_routes
from fsops.nodes import Node
from levels import check, tuning
from levels.circuits import PICTURE, Filling, validate_result_name
from levels.compiler import COMPILED_FORMATS
from levels.devices import DeviceSpec
from levels.errors import Exists, Invalid, NotFound, ReadOnly
from levels.fabric import Fabric
from levels.qasm import VIEW_FORMATS
from levels.scratch import is_scratch_name
from levels.sdkformats import SDK_FORMATS, split_import
from levels.similar import rank_similar

Path = tuple[str, ...]
CIRCUITS, SEARCH, OPS = "circuits", "search", ".qfs"
COMPILED = "compiled"
DIFF = "diff"
_VERSION_FILE = re.compile(r"^v([1-9][0-9]{0,9})\.([a-z0-9]+(?:\.json)?)$")
_COMPILED_FILE = re.compile(r"^v([1-9][0-9]{0,9})\.(qasm|qpy|report\.json)$")
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
    """`bell.qasm` (or `bell.quil`, levels.sdkformats.IMPORTS) written into /circuits/
    imports circuit `bell`; dot files stay scratch."""
    split = split_import(filename)
    return split[0] if split else None


def commit_import(fabric: Fabric, filename: str) -> nodes.Commit:
    name, written_as = split_import(filename) or (filename, "qasm")
    return nodes.commit_import(fabric, name, written_as)


def picture_run(filename: str) -> str | None:
    """`<run>.png` in results/ is the histogram of `<run>.json`."""
    suffix = f".{PICTURE}"
    return filename[: -len(suffix)] if filename.endswith(suffix) else None


def parse_version_file(filename: str) -> tuple[int, str] | None:
    match = _VERSION_FILE.match(filename)
    return (int(match.group(1)), match.group(2)) if match else None


def commit_target(fabric: Fabric, path: Path) -> nodes.Commit | None:
    """What renaming a file onto `path` (or writing it) commits, or None for plain files."""
    if len(path) == 2 and path[0] == CIRCUITS and import_name(path[1]):
        return commit_import(fabric, path[1])
    if len(path) == 3 and is_circuit_dir(fabric, path[:2]):
        name, leaf = path[1], path[2]
        version = parse_version_file(leaf)
        if leaf == "latest.qasm":
            return nodes.commit_circuit_version(fabric, name, create=False)
        if leaf == "meta.json":
            return nodes.commit_meta(fabric, name)
        if version is not None and version[1] == "qasm":
            return nodes.commit_restored_version(fabric, name, version[0])
        if leaf in ("stats.json", "errors") or (
            version is not None and version[1] in (*VIEW_FORMATS, *SDK_FORMATS, PICTURE, DIFF)
        ):
            return derived_commit(fabric, path)
    if len(path) == 4 and path[0] == CIRCUITS and path[2] == "results":
        fabric.circuits.get(path[1])
        if picture_run(path[3]) is not None:
            return derived_commit(fabric, path)
        return nodes.commit_result(fabric, path[1], path[3])
    return workflow_routes.submit_target(fabric, path)


def derived_commit(fabric: Fabric, path: Path) -> nodes.Commit:
    """Views, stats.json, errors and histograms are computed: writing back the bytes they
    hold changes nothing (so that a backup can be written back), other bytes are EACCES.
    Into a circuit made by mkdir and being filled, or before the version they come from,
    they are accepted unread: they are computed once its versions are in."""

    async def commit(data: bytes, uid: int) -> None:
        fill = fabric.circuits.filling(path[1])
        if fill is not None and fill.fresh:
            return
        try:
            current = await (await resolve(fabric, path)).read()
        except NotFound:
            return
        if data != current:
            raise ReadOnly(f"/{'/'.join(path)} is computed from the circuit's versions: only "
                           f"the bytes it holds can be written to it")

    return commit


def create_node(fabric: Fabric, path: Path, mode: int, uid: int, gid: int) -> Node:
    """What create() makes in /circuits, a circuit or its results/: a scratch file under a
    name tools give temporaries, a file the fabric keeps (its write commits), or EINVAL
    with the reason: a file that would be gone after a remount is refused."""
    leaf = path[-1]
    placeholder = len(path) == 4 and path[2] == "similar"
    if is_scratch_name(leaf) or placeholder or (len(path) == 2 and import_name(leaf)):
        if len(path) == 2 and fabric.circuits.mtime(leaf) is not None:
            raise Exists(f"circuit {leaf} exists")
        fabric.scratch.create(path[:-1], leaf, mode, uid, gid)
        return scratch_node(fabric, path)
    if len(path) == 4 and picture_run(leaf) is None:
        validate_result_name(leaf)
    commit = commit_target(fabric, path)
    if commit is None:
        raise not_kept(path)
    if len(path) > 2:
        written(fabric, path)
    return Node(nodes.FILE, 0o644, time.time_ns(), commit=commit, subject=path[1],
                entry_timeout=0.0)  # it exists once its commit succeeds


def not_kept(path: Path) -> Invalid:
    leaf = path[-1]
    if len(path) == 2:
        return Invalid(f"{leaf}: /circuits keeps circuits: copy in <name>.qasm or mkdir "
                       f"<name> (a file {leaf} would not be kept)")
    return Invalid(f"{leaf}: a circuit keeps latest.qasm, vN.qasm, meta.json and results/"
                   f"<run>.json (a file {leaf} would not be kept)")


def written(fabric: Fabric, path: Path, target: str = "") -> None:
    """Record a name written into a circuit being filled, so that it shows (Filling)."""
    fill = fabric.circuits.filling(path[1])
    if fill is not None:
        fill.wrote("/".join(path[2:]), target)


def is_circuit_dir(fabric: Fabric, path: Path) -> bool:
    return len(path) == 2 and path[0] == CIRCUITS and fabric.circuits.mtime(path[1]) is not None


def scratch_dir(fabric: Fabric, path: Path) -> bool:
    """Directories where tools may keep scratch files: /circuits, each circuit, results/,
    and similar/ of a circuit being written back (tar extracts a link as an empty file
    first, and replaces it by the link at the end)."""
    if len(path) == 3 and is_circuit_dir(fabric, path[:2]):
        return path[2] == "results" or (
            path[2] == "similar" and fabric.circuits.filling(path[1]) is not None)
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
    if len(path) == 2 and import_name(path[1]):
        commit = commit_import(fabric, path[1])
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
            node.commit = commit_import(fabric, name)
            node.entry_timeout = 0.0
            return node
        return scratch_node(fabric, path)
    if depth == 2:
        return nodes.directory(mtime)
    leaf = path[2]
    fill = fabric.circuits.filling(name)
    if fill is not None:
        _check_filled(fabric, fill, path)
        target = fill.written.get("/".join(path[2:]))
        if depth == 4 and leaf == "similar" and target:
            return nodes.symlink(target, mtime)
    if depth == 3:
        return await _resolve_circuit_file(fabric, name, leaf, mtime)
    if depth == 4 and fabric.scratch.find(path[:3], path[3]) is not None:
        return scratch_node(fabric, path)
    if depth == 4 and leaf == "results":
        run = picture_run(path[3])
        if run is not None:
            node = await nodes.result_picture(fabric, name, run)
            node.commit = derived_commit(fabric, path)
            return node
        return nodes.result_file(fabric, name, path[3])
    if depth == 4 and leaf == "similar" and path[3] in dict(await similar(fabric, name)):
        return nodes.symlink(similar_target(path[3]), mtime)
    if leaf == COMPILED and depth == 4:
        device_spec(fabric, path[3])
        return nodes.directory(mtime, perm=0o555, timeout=0.0)
    if leaf == COMPILED and depth == 5 and (match := _COMPILED_FILE.match(path[4])):
        return await nodes.compiled_file(fabric, name, int(match.group(1)),
                                         device_spec(fabric, path[3]), match.group(2))
    raise NotFound("/".join(path))


def device_spec(fabric: Fabric, device: str) -> DeviceSpec:
    """compiled/<device>/: the default device or any configured under /devices."""
    for spec in fabric.qubits.specs:
        if spec.name == device:
            return spec
    raise NotFound(f"no device {device} (devices: {', '.join(fabric.qubits.device_names())})")


def _check_filled(fabric: Fabric, fill: Filling, path: Path) -> None:
    """In a circuit being written back, what Filling hides is NotFound (results/<run>.json
    are data: never hidden), so that cp -a and tar x may create it."""
    rel = "/".join(path[2:])
    data = len(path) == 4 and path[2] == "results" and picture_run(path[3]) is None
    if not (fill.shows(rel) or data or fabric.scratch.find(path[:-1], path[-1])):
        raise NotFound(f"{rel} is not written yet into {path[1]}, which is being written back")


async def _resolve_circuit_file(fabric: Fabric, name: str, leaf: str, mtime: int) -> Node:
    if leaf == "latest.qasm":
        return nodes.latest_file(fabric, name)
    if leaf == "meta.json":
        return nodes.meta_file(fabric, name)
    if leaf == "stats.json":
        node = await nodes.stats_file(fabric, name)
        node.commit = derived_commit(fabric, (CIRCUITS, name, leaf))
        return node
    if leaf == "errors":
        node = nodes.live(lambda: fabric.oplog.subject_text(name))
        node.subject = name
        node.commit = derived_commit(fabric, (CIRCUITS, name, leaf))
        return node
    if leaf in ("results", "similar"):
        return nodes.directory(mtime, perm=0o755 if leaf == "results" else 0o555, timeout=0.0)
    if leaf == COMPILED:  # unlisted, as /search queries: tree walkers transpile nothing
        return nodes.directory(mtime, perm=0o555, timeout=0.0)
    version = parse_version_file(leaf)
    if version is not None:
        n, fmt = version
        if fmt == "qasm":
            return nodes.version_source(fabric, name, n)
        if fmt in (*VIEW_FORMATS, *SDK_FORMATS, PICTURE, DIFF):
            made = nodes.version_diff(fabric, name, n) if fmt == DIFF else \
                nodes.version_view(fabric, name, n, fmt)
            node = await made
            node.commit = derived_commit(fabric, (CIRCUITS, name, leaf))
            return node
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
        return entries + _scratch_entries(fabric, path)
    elif path[0] == CIRCUITS and depth == 3 and path[2] == COMPILED:
        await resolve(fabric, path)
        names = fabric.qubits.device_names()
    elif path[0] == CIRCUITS and depth == 4 and path[2] == COMPILED:
        await resolve(fabric, path)
        entries = []
        for version in fabric.circuits.get(path[1]).versions:
            for fmt in COMPILED_FORMATS:
                leaf = f"v{version.n}.{fmt}"
                try:
                    entries.append((leaf, await resolve(fabric, (*path, leaf))))
                except Invalid:
                    continue  # a version this device cannot hold: not listed
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
