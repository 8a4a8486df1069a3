"""The /circuits tree (Level 3, CircuitFS):

    /circuits/<name>/{latest.qasm, vN.qasm, vN.<view>, vN.diff, vN.png, meta.json,
                      stats.json, errors}
    /circuits/<name>/results/<run>.json, <run>.png
    /circuits/<name>/similar/<rank>-<other> -> ../../<other>/latest.qasm
    /circuits/<name>/compiled/<device>/{vN.qasm, vN.qpy, vN.report.json}   (unlisted)
    /circuits/<name>.qasm                   imports circuit <name>, then stays an unlisted
                                            alias of its latest.qasm

In /circuits, a circuit and its results/, tools may create scratch files under the names
they give temporaries (levels/scratch.py); any other file the fabric would not keep is
refused at create() with EINVAL. A circuit made by mkdir shows only what was written into
it until it is first listed (levels/circuits.py, Filling), so that a backup can be written
back. View names come from levels.qasm.VIEW_FORMATS and compiled ones from
levels.compiler.COMPILED_FORMATS: a new format shows up here without an edit.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from levels.circuits import (
    PICTURE,
    CircuitStore,
    bounded_json,
    validate_result_name,
)
from levels.compiler import COMPILED_FORMATS
from levels.devices import DeviceSpec
from levels.errors import (
    Exists,
    Invalid,
    NoAttribute,
    NotEmpty,
    NotFound,
    NotSupported,
    ReadOnly,
)
from levels.qasm import (
    SERIALIZED_VIEWS,
    TEXT_DRAWING,
    VIEW_FORMATS,
    text_drawing_refusal,
)
from levels.scratch import is_scratch_name
from levels.sdkformats import IMPORTS, SDK_FORMATS, split_import
from levels.timestamps import parse_iso
from levels.vfs.entry import (
    DIR,
    DIR_TIMEOUT,
    FILE,
    KEPT_TIMEOUT,
    STARTED_NS,
    XATTR_FIELDS,
    XATTR_PREFIX,
    Attrs,
    Constant,
    Content,
    Dir,
    Entries,
    Entry,
    Listing,
    Live,
    Names,
    NewFile,
    Path,
    Scratch,
    Symlink,
    Uniform,
    directory,
    field,
    immutable_file,
    unmeasured_file,
)

if TYPE_CHECKING:
    from levels.fabric import Fabric

T = TypeVar("T")

CIRCUITS = "circuits"
DIFF = "diff"
PINNED = "user.qfs.pinned"  # on vN.qasm: "1" keeps the version beyond retention
_VERSION_FILE = re.compile(r"^v([1-9][0-9]{0,9})\.([a-z0-9]+(?:\.json)?)$")
# The largest N a vN.qasm written back may have: a backup's numbers come from real
# histories, and a larger one would leave the versions after it no names of ten digits.
MAX_WRITTEN_VERSION = 10**9
Ranked = list[tuple[str, float]]
# compiled/<device>/vN.<fmt>: the formats levels.compiler makes, whatever they are.
_COMPILED_FILE = re.compile(
    r"^v([1-9][0-9]{0,9})\.(" + "|".join(map(re.escape, COMPILED_FORMATS)) + r")$")


def import_name(filename: str) -> str | None:
    """`bell.qasm` (or `bell.quil`, levels.sdkformats.IMPORTS) written into /circuits/
    imports circuit `bell`; dot files stay scratch."""
    split = split_import(filename)
    return split[0] if split else None


def imported_as(filename: str) -> str:
    """The format of a file written into /circuits: qasm, quil, cirq.json."""
    split = split_import(filename)
    return split[1] if split else "qasm"


def picture_run(filename: str) -> str | None:
    """`<run>.png` in results/ is the histogram of `<run>.json`."""
    suffix = f".{PICTURE}"
    return filename[: -len(suffix)] if filename.endswith(suffix) else None


def parse_version_file(filename: str) -> tuple[int, str] | None:
    match = _VERSION_FILE.match(filename)
    return (int(match.group(1)), match.group(2)) if match else None


def derived(fmt: str) -> bool:
    return fmt in (*VIEW_FORMATS, *SDK_FORMATS, PICTURE, DIFF)


# -- what written bytes become -------------------------------------------------------------


async def commit_version(fabric: Fabric, name: str, data: bytes, create: bool,
                         written_as: str = "qasm") -> None:
    """Bytes written become the next version of circuit `name` after Qiskit accepts them
    (`written_as`: qasm, or a format of levels.sdkformats such as quil)."""
    with fabric.metrics.artifact_store_seconds.time():
        prepared = await fabric.circuits.prepare_version(data, written_as)
        fabric.circuits.commit_version(name, prepared, create=create)


async def commit_import(fabric: Fabric, name: str, data: bytes, written_as: str = "qasm") -> None:
    """`<name>.qasm` (or .quil, .cirq.json) written into /circuits: a version of circuit
    `name`, made if need be; an empty file (`touch`) makes the circuit with no version yet,
    as mkdir does."""
    if data:
        await commit_version(fabric, name, data, create=True, written_as=written_as)
    elif fabric.circuits.mtime(name) is None:
        fabric.circuits.create(name)


async def restore_version(fabric: Fabric, name: str, n: int, data: bytes) -> None:
    """Bytes written as vN.qasm (a backup written back) become version n itself; the bytes
    vN holds already change nothing, other bytes are EACCES (levels/circuits.py)."""
    if fabric.circuits.restore_needed(name, n, data):
        prepared = await fabric.circuits.prepare_version(data)
        fabric.circuits.restore_version(name, n, prepared)


async def accept_derived(fabric: Fabric, path: Path, data: bytes) -> None:
    """Views, stats.json, errors and histograms are computed: writing back the bytes they
    hold changes nothing (so that a backup can be written back), other bytes are EACCES.
    Into a circuit made by mkdir and being filled, or before the version they come from,
    they are accepted unread: they are computed once its versions are in."""
    from levels.vfs.tree import resolve

    fill = fabric.circuits.filling(path[1])
    if fill is not None and fill.fresh:
        return
    try:
        current = await (await resolve(fabric, path)).read_all()
    except NotFound:
        return
    if data != current:
        raise ReadOnly(f"/{'/'.join(path)} is computed from the circuit's versions: only "
                       f"the bytes it holds can be written to it")


def written_back_time(fabric: Fabric, name: str, n: int, mtime_ns: int) -> None:
    """The time cp -a, tar and rsync set on vN.qasm they write back is version N's."""
    fill = fabric.circuits.filling(name)
    if fill is not None and fill.fresh:
        fabric.circuits.set_version_time(name, n, mtime_ns)


# -- files -----------------------------------------------------------------------------------


class CircuitFile(Entry):
    """A file of circuit `name`: its refusals are reported under the circuit."""

    def __init__(self, fabric: Fabric, path: Path, name: str, attrs: Attrs) -> None:
        super().__init__(fabric, path, attrs)
        self.name = self.subject = name


class Derived(Constant):
    """A computed file (view, diff, picture, stats.json, histogram): EACCES for bytes other
    than those it holds (accept_derived)."""

    writable = commits = True

    def __init__(self, fabric: Fabric, path: Path, data: bytes, attrs: Attrs) -> None:
        super().__init__(fabric, path, data, attrs)
        self.subject = path[1]

    async def commit(self, data: bytes, uid: int) -> None:
        await accept_derived(self.fabric, self.path, data)


def cached_across_change(name: str) -> list[Path]:
    """The paths whose attributes the kernel keeps (attr_timeout > 0) although a change to
    circuit `name` changes them: the FUSE layer drops them when the circuit changes."""
    return [("circuits", name), ("circuits", name, "latest.qasm"),
            ("circuits", name, "meta.json"),
            ("circuits", name, "results"), ("circuits", name, "similar"),
            *(("circuits", f"{name}.{suffix}") for suffix in IMPORTS)]


class LatestQasm(CircuitFile):
    """latest.qasm: reads the newest version; a completed write of new content (or a
    rename onto it: editors' atomic saves) is the next version, EINVAL with Qiskit's reason
    when refused, EFBIG/ENOSPC past the write bounds. Also the unlisted /circuits/<name>.qasm
    alias once imported (entry timeout 0: it may become a scratch name again, so every
    path to it is looked up afresh).
    Its attributes are kept (KEPT_TIMEOUT; the alias's 1 s, which spares cp's stat after
    its close a getattr): every change to the circuit drops them (cached_across_change),
    as does the close of a write."""

    writable = commits = True

    def __init__(self, fabric: Fabric, path: Path, name: str, alias: bool = False) -> None:
        self.written_as = imported_as(path[-1]) if alias else "qasm"
        circuit = fabric.circuits.get(name)
        latest = circuit.latest
        super().__init__(fabric, path, name, Attrs(
            FILE, 0o644, latest.created_ns if latest else circuit.created_ns,
            size=latest.size if latest else 0, entry_timeout=0.0 if alias else KEPT_TIMEOUT,
            attr_timeout=DIR_TIMEOUT if alias else KEPT_TIMEOUT, pages_follow_attrs=not alias))

    async def open(self) -> Content:
        if self.attrs.pages_follow_attrs:
            return NewestSource(self.fabric.circuits, self.name)
        return self.fabric.circuits.source(self.name)

    async def commit(self, data: bytes, uid: int) -> None:
        await commit_version(self.fabric, self.name, data, create=False,
                             written_as=self.written_as)


class NewestSource:
    """What an open latest.qasm reads: the newest version's bytes at each read, not those
    of the version at its open. The kernel keeps the file's pages, shared by every opener,
    under the newest version's size and mtime: a reader opened before a new version that
    read its own snapshot would fill them with bytes of no version, served to every later
    reader (and committed by the next `sed -i`). A circuit renamed or removed meanwhile
    leaves the reader what it had."""

    def __init__(self, circuits: CircuitStore, name: str) -> None:
        self._circuits, self._name = circuits, name
        self._seen = circuits.changes
        self._data = circuits.source(name)
        self.size = len(self._data)

    async def read(self, offset: int, size: int) -> bytes:
        if self._circuits.changes != self._seen:
            self._seen = self._circuits.changes
            with contextlib.suppress(NotFound):
                self._data = self._circuits.source(self._name)
                self.size = len(self._data)
        return self._data[offset : offset + size]


class VersionSource(CircuitFile):
    """vN.qasm: version N's bytes as written (immutable: keep_cache). Writing the same
    bytes back changes nothing, other bytes are EACCES; written where there is no version N
    it restores version N (VersionRestore). Its one xattr is user.qfs.pinned."""

    writable = commits = True

    def __init__(self, fabric: Fabric, path: Path, name: str, n: int) -> None:
        version = fabric.circuits.get(name).version(n)
        super().__init__(fabric, path, name, immutable_file(version.size, version.created_ns))
        self.n = n

    async def open(self) -> Content:
        return self.fabric.circuits.source(self.name, self.n)

    async def commit(self, data: bytes, uid: int) -> None:
        await restore_version(self.fabric, self.name, self.n, data)

    def set_attrs(self, mode: int | None, uid: int | None, gid: int | None,
                  mtime_ns: int | None) -> None:
        if mtime_ns is not None:
            written_back_time(self.fabric, self.name, self.n, mtime_ns)

    def _pinned(self) -> bool:
        return self.n in self.fabric.circuits.get(self.name).meta.get("pinned", ())

    async def getxattr(self, name: str) -> bytes:
        if name != PINNED or not self._pinned():
            raise NoAttribute(name)
        return b"1"

    def listxattr(self) -> Names:
        return [PINNED] if self._pinned() else []

    async def setxattr(self, name: str, value: bytes) -> None:
        if name != PINNED:
            await super().setxattr(name, value)
            return
        if value not in (b"0", b"1"):
            raise Invalid(f"{PINNED} is 1 (keep this version beyond retention) or 0")
        self.fabric.circuits.pin(self.name, self.n, value == b"1")

    async def removexattr(self, name: str) -> None:
        await self.getxattr(name)
        self.fabric.circuits.pin(self.name, self.n, False)


async def made_now_or_in_thread(made: Callable[[], T | None], make: Callable[[], T]) -> T:
    """What `made` has at hand (cached: answered on trio's thread), else `make` on a worker
    thread: a thread's round trip is most of a cached answer's time on a small machine."""
    answer = made()
    return answer if answer is not None else await trio.to_thread.run_sync(make)


async def version_view(fabric: Fabric, path: Path, name: str, n: int, fmt: str) -> Derived:
    """vN.<view>, vN.png and vN.diff: rendered at the first lookup (in a worker), because
    st_size must be exact, then taken from the cache; immutable (keep_cache). EINVAL where
    the format cannot express the circuit."""
    circuits = fabric.circuits
    version = circuits.get(name).version(n)
    if fmt == DIFF:
        data = await made_now_or_in_thread(lambda: circuits.made_diff(name, n),
                                           lambda: circuits.make_diff(name, n))
    else:
        data = await made_now_or_in_thread(lambda: circuits.made_view(name, n, fmt),
                                           lambda: circuits.make_view(name, n, fmt))
    return Derived(fabric, path, data, immutable_file(0, version.created_ns))


class MetaJson(CircuitFile):
    """meta.json: description, author, tags, parameters, pinned, optimization_level,
    created; a write replaces it (EINVAL for JSON the schema refuses). Its attributes are
    kept a second (a walk's stat, open and read of it ask for none) and dropped at every
    change to the circuit (cached_across_change): it shows the circuit's record only."""

    writable = commits = True

    def __init__(self, fabric: Fabric, path: Path, name: str) -> None:
        circuit = fabric.circuits.get(name)
        self.data = CircuitStore.meta_json(circuit)
        super().__init__(fabric, path, name, Attrs(FILE, 0o644, circuit.mtime_ns,
                                                   size=len(self.data), attr_timeout=DIR_TIMEOUT))

    async def open(self) -> Content:
        return self.data

    async def commit(self, data: bytes, uid: int) -> None:
        self.fabric.circuits.set_meta(self.name, data)


async def stats_json(fabric: Fabric, path: Path, name: str) -> Derived:
    """stats.json; each version's equivalence to the one before is decided now (workers,
    cached), so that st_size is exact. Its attributes are never kept: its bytes change
    without a change to the circuit when a comparison that could not finish is made again
    once the cache has let it go, and when a view is first found unavailable (its reason
    joins `unavailable_views`, as a circuit's first listing renders its views)."""
    circuit = fabric.circuits.get(name)
    history = await made_now_or_in_thread(lambda: fabric.circuits.compared_history(name),
                                          lambda: fabric.circuits.history(name))
    return Derived(fabric, path, CircuitStore.stats_json(circuit, history),
                   Attrs(FILE, 0o444, circuit.mtime_ns))


class ErrorsFile(Live):
    """errors: why the last writes to this circuit were refused (live)."""

    writable = commits = True

    def __init__(self, fabric: Fabric, path: Path, name: str) -> None:
        super().__init__(fabric, path, lambda: fabric.oplog.subject_text(name))
        self.subject = name

    async def commit(self, data: bytes, uid: int) -> None:
        await accept_derived(self.fabric, self.path, data)


class ResultFile(CircuitFile):
    """results/<run>.json: a run's result; writable (a backup written back), rm deletes it,
    renamed away it moves."""

    writable = commits = renamable = True

    def __init__(self, fabric: Fabric, path: Path, name: str, run: str) -> None:
        self.data = fabric.circuits.result(name, run)
        super().__init__(fabric, path, name, Attrs(
            FILE, 0o644, fabric.circuits.get(name).mtime_ns, size=len(self.data)))
        self.run = run

    async def open(self) -> Content:
        return self.data

    async def commit(self, data: bytes, uid: int) -> None:
        self.fabric.circuits.put_result(self.name, self.run, data)

    def taken(self) -> None:
        self.fabric.circuits.delete_result(self.name, self.run)


async def result_picture(fabric: Fabric, path: Path, name: str, run: str) -> Derived:
    """results/<run>.png: the histogram of <run>.json (drawn in a worker)."""
    data = await trio.to_thread.run_sync(fabric.circuits.result_picture, name, run)
    return Derived(fabric, path, data, Attrs(FILE, 0o444, fabric.circuits.get(name).mtime_ns))


# -- directories ---------------------------------------------------------------------------


class CircuitsDir(Dir):
    """/circuits: one directory per circuit. mkdir makes a circuit (EEXIST if taken), rmdir
    deletes it with every version, rename renames it (within /circuits only, EINVAL
    elsewhere); `<name>.qasm` written here imports it; scratch names are kept in memory."""

    keeps_scratch = True

    def __init__(self, fabric: Fabric, path: Path) -> None:
        super().__init__(fabric, path, directory(STARTED_NS))

    async def lookup(self, name: str) -> Entry:
        circuits = self.fabric.circuits
        mtime = circuits.mtime(name)
        if mtime is not None:
            return CircuitDir(self.fabric, self.child(name), mtime)
        alias = import_name(name)
        # /circuits/<name>.qasm stays an unlisted alias of <name>/latest.qasm once
        # imported, so a second cp, or the kernel's cached entry, finds a file there.
        unclaimed = self.fabric.scratch.find(self.path, name) is None
        if alias and unclaimed and circuits.mtime(alias) is not None:
            return LatestQasm(self.fabric, self.child(name), alias, alias=True)
        return self.scratch_entry(name)

    async def list(self) -> Listing:
        return Uniform(self.fabric.circuits.names_with_mtime(), circuit_directory(0),
                       rest=self.scratch_entries())

    def scratch_entry(self, name: str) -> Entry:
        file = self.fabric.scratch.get(self.path, name)
        circuit = import_name(name)
        if circuit is None:
            return Scratch(self.fabric, self.child(name), file)

        async def commit(data: bytes, uid: int) -> None:
            await commit_import(self.fabric, circuit, data, imported_as(name))

        return Scratch(self.fabric, self.child(name), file, commit, circuit)

    async def mkdir(self, name: str, uid: int) -> None:
        if self.fabric.scratch.find(self.path, name) is not None:
            raise Exists(f"{name} exists")
        self.fabric.circuits.create(name)
        self.fabric.circuits.begin_filling(name)

    async def rmdir(self, name: str) -> None:
        if self.fabric.circuits.mtime(name) is None:
            await super().rmdir(name)
            return
        self.fabric.circuits.delete(name)
        self.fabric.scratch.drop_tree(self.child(name))
        self.fabric.oplog.forget_subject(name)

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        imported = import_name(name) is not None
        if (imported or is_scratch_name(name)) and self.fabric.circuits.mtime(name) is not None:
            raise Exists(f"circuit {name} exists")
        return await self.create_scratch_or_target(name, mode, uid, gid, scratch=imported)

    async def commit_target(self, name: str) -> NewFile | None:
        circuit = import_name(name)
        if circuit is None:
            return None

        async def commit(data: bytes, uid: int) -> None:
            await commit_import(self.fabric, circuit, data, imported_as(name))

        return NewFile(self.fabric, self.child(name), commit, circuit)

    def not_kept(self, name: str) -> Invalid:
        return Invalid(f"{name}: /circuits keeps circuits: copy in <name>.qasm or mkdir "
                       f"<name> (a file {name} would not be kept)")

    async def rename_into(self, name: str, src: Entry, uid: int) -> None:
        if not isinstance(src, CircuitDir):
            await super().rename_into(name, src, uid)
            return
        self.fabric.circuits.rename(src.name, name)
        self.fabric.scratch.move_tree(src.path, self.child(name))
        self.fabric.oplog.rename_subject(src.name, name)


class CircuitPart(Dir):
    """A directory in circuit `name` (the circuit itself, results/, similar/, compiled/):
    while the circuit is being written back (Filling) it hides what is not written yet."""

    def __init__(self, fabric: Fabric, path: Path, attrs: Attrs) -> None:
        super().__init__(fabric, path, attrs)
        self.name = self.subject = path[1]

    def rel(self, leaf: str) -> str:
        return "/".join((*self.path[2:], leaf))

    def check_filled(self, leaf: str, data: bool = False) -> None:
        """In a circuit being written back, what Filling hides is NotFound (results are
        data: never hidden), so that cp -a and tar x may create it."""
        fill = self.fabric.circuits.filling(self.name)
        rel = self.rel(leaf)
        if fill is None or fill.shows(rel) or data or \
                self.fabric.scratch.find(self.path, leaf) is not None:
            return
        raise NotFound(f"{rel} is not written yet into {self.name}, which is being written back")

    def wrote(self, name: str, target: str = "") -> None:
        fill = self.fabric.circuits.filling(self.name)
        if fill is not None:
            fill.wrote(self.rel(name), target)

    def hide(self, leaf: str) -> None:
        """rm of a circuit's file deletes nothing and hides it until written again or the
        circuit listed, so that `rm -r` reaches the rmdir that deletes the circuit and tar
        x can write it back."""
        self.fabric.circuits.hide(self.name, self.rel(leaf))

    def not_kept(self, name: str) -> Invalid:
        return Invalid(f"{name}: a circuit keeps latest.qasm, vN.qasm, meta.json and results/"
                       f"<run>.json (a file {name} would not be kept)")

    def filling(self) -> bool:
        return self.fabric.circuits.filling(self.name) is not None


def circuit_directory(mtime_ns: int) -> Attrs:
    """A circuit's directory's attributes (kept by the kernel: see KEPT_TIMEOUT)."""
    return Attrs(DIR, 0o755, mtime_ns, 0, KEPT_TIMEOUT, KEPT_TIMEOUT)


class CircuitDir(CircuitPart):
    """/circuits/<name>/: its versions, views, meta.json, stats.json, errors, results/,
    similar/ and (unlisted) compiled/. Each fabric file keeps its own write rules; rm of
    one hides it (CircuitPart.hide); user.qfs.* xattrs are meta.json's fields."""

    keeps_scratch = True

    def __init__(self, fabric: Fabric, path: Path, mtime_ns: int) -> None:
        super().__init__(fabric, path, circuit_directory(mtime_ns))
        self.mtime_ns = mtime_ns

    def not_movable(self) -> Exception:
        return Invalid("a circuit can only be renamed within /circuits")

    async def lookup(self, name: str) -> Entry:
        self.check_filled(name)
        return await self._file(name)

    async def _file(self, leaf: str) -> Entry:
        fabric, path, name = self.fabric, self.child(leaf), self.name
        if leaf == "latest.qasm":
            return LatestQasm(fabric, path, name)
        if leaf == "meta.json":
            return MetaJson(fabric, path, name)
        if leaf == "stats.json":
            return await stats_json(fabric, path, name)
        if leaf == "errors":
            return ErrorsFile(fabric, path, name)
        if leaf == "results":
            return ResultsDir(fabric, path, directory(self.mtime_ns))
        if leaf == "similar":
            return SimilarDir(fabric, path, directory(self.mtime_ns, 0o555))
        if leaf == "compiled":  # unlisted, as /search queries: tree walkers transpile nothing
            return CompiledDir(fabric, path, directory(self.mtime_ns, 0o555, timeout=0.0))
        version = parse_version_file(leaf)
        if version is not None and version[1] == "qasm":
            return VersionSource(fabric, path, name, version[0])
        if version is not None and derived(version[1]):
            return await version_view(fabric, path, name, *version)
        return self.scratch_entry(leaf)

    def names(self) -> Names:
        """The fabric's own entries (scratch files come on top)."""
        circuits, name = self.fabric.circuits, self.name
        circuit = circuits.get(name)
        names = ["latest.qasm", "meta.json", "stats.json", "errors", "results", "similar"]
        kept = {version.n for version in circuit.versions}
        for version in circuit.versions:
            n = version.n
            names.append(f"v{n}.qasm")
            if n - 1 in kept:
                names.append(f"v{n}.diff")
            names.extend(f"v{n}.{fmt}" for fmt in SERIALIZED_VIEWS)
            if text_drawing_refusal(version.stats["size"]) is None:
                names.append(f"v{n}.{TEXT_DRAWING}")
            if circuits.drawn(name, n, PICTURE):  # pictures: listed once drawn
                names.append(f"v{n}.{PICTURE}")
        return names

    async def list(self) -> Listing:
        # Serializations are listed where they can hold the circuit, with their exact size:
        # render those not yet made in one worker thread first.
        circuits = self.fabric.circuits
        if not all(circuits.serialized(self.name, v.n) for v in circuits.get(self.name).versions):
            await trio.to_thread.run_sync(self._render_serializations)
        entries: Entries = []
        for leaf in self.names():
            try:
                entries.append((leaf, await self._listed(leaf)))
            except Invalid:
                continue  # a view this circuit cannot be expressed in: not listed
        return entries + self.scratch_entries()

    async def _listed(self, leaf: str) -> Entry | Attrs:
        """A text drawing not yet made is listed unmeasured: drawing it is most of a
        listing's time, and a tree walker such as find never stats it."""
        version = parse_version_file(leaf)
        if version is not None and version[1] == TEXT_DRAWING:
            n = version[0]
            if not self.fabric.circuits.drawn(self.name, n, TEXT_DRAWING):
                return unmeasured_file(self.fabric.circuits.get(self.name).version(n).created_ns)
        return await self._file(leaf)

    def _render_serializations(self) -> None:
        for version in self.fabric.circuits.get(self.name).versions:
            for fmt in SERIALIZED_VIEWS:  # the first renders them all, from one parse
                with contextlib.suppress(Invalid):
                    self.fabric.circuits.view(self.name, version.n, fmt)

    def lists_late(self) -> bool:
        """A circuit being written back is listed at the first readdir, which ends that
        (Filling): tar x opens the directory it extracts into, without listing it."""
        return self.filling()

    def listed(self) -> None:
        self.fabric.circuits.end_filling(self.name)

    async def mkdir(self, name: str, uid: int) -> None:
        if self.filling() and name in ("results", "similar"):
            self.wrote(name)  # a backup's directories, written back
            return
        await super().mkdir(name, uid)

    async def remove_child(self, name: str) -> None:
        await self.lookup(name)
        self.hide(name)

    async def rmdir(self, name: str) -> None:
        if name == "results":
            if self.fabric.circuits.results(self.name):
                raise NotEmpty(f"{self.name}/results still holds results")
            return  # rm -r of a circuit passes through here: a no-op, the dir is virtual
        if name == "similar":
            return
        await self.lookup(name)
        raise ReadOnly(f"/{'/'.join(self.child(name))} cannot be removed")

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        return await self.create_scratch_or_target(name, mode, uid, gid, scratch=False)

    async def commit_target(self, name: str) -> NewFile | None:
        fabric, circuit, path = self.fabric, self.name, self.child(name)
        version = parse_version_file(name)

        async def latest(data: bytes, uid: int) -> None:
            await commit_version(fabric, circuit, data, create=False)

        async def meta(data: bytes, uid: int) -> None:
            fabric.circuits.set_meta(circuit, data)

        async def computed(data: bytes, uid: int) -> None:
            await accept_derived(fabric, path, data)

        if name == "latest.qasm":
            return NewFile(fabric, path, latest, circuit)
        if name == "meta.json":
            return NewFile(fabric, path, meta, circuit)
        if version is not None and version[1] == "qasm":
            n = version[0]
            if n > MAX_WRITTEN_VERSION:
                raise Invalid(f"{name}: a version written back is numbered at most "
                              f"{MAX_WRITTEN_VERSION}")

            async def restore(data: bytes, uid: int) -> None:
                await restore_version(fabric, circuit, n, data)

            return NewFile(fabric, path, restore, circuit,
                           on_time=lambda ns: written_back_time(fabric, circuit, n, ns))
        if name in ("stats.json", "errors") or (version is not None and derived(version[1])):
            return NewFile(fabric, path, computed, circuit)
        return None

    def defines(self, name: str) -> bool:
        return name in self.names() or parse_version_file(name) is not None

    # -- user.qfs.* extended attributes: meta.json's fields ------------------------------------

    async def getxattr(self, name: str) -> bytes:
        key = field(name)
        circuit = self.fabric.circuits.get(self.name)
        if key not in circuit.meta and key != "created":
            raise NoAttribute(name)
        value = json.loads(CircuitStore.meta_json(circuit))[key]
        if key == "tags":
            return ",".join(value).encode()
        return (value if isinstance(value, str) else json.dumps(value)).encode()

    def listxattr(self) -> Names:
        circuit = self.fabric.circuits.get(self.name)
        present = [f for f in XATTR_FIELDS if f in circuit.meta]
        return [f"{XATTR_PREFIX}{f}" for f in (*present, "created")]

    async def setxattr(self, name: str, value: bytes) -> None:
        key = field(name, missing=NotSupported)
        if key == "created":
            self._set_created(value)
            return
        parsed = xattr_value(key, value)
        self.fabric.circuits.update_meta(self.name, lambda meta: {**meta, key: parsed})

    def _set_created(self, value: bytes) -> None:
        """user.qfs.created is read-only, but cp -a writes it back, into a circuit it is
        filling (the circuit keeps its creation time) or unchanged."""
        created = parse_iso(value.decode(errors="replace"))
        fill = self.fabric.circuits.filling(self.name)
        if fill is not None and fill.fresh:
            self.fabric.circuits.set_created(self.name, created)
        elif created // 10**9 != self.fabric.circuits.get(self.name).created_ns // 10**9:
            raise ReadOnly("user.qfs.created is read-only")

    async def removexattr(self, name: str) -> None:
        key = field(name)
        if key not in self.fabric.circuits.get(self.name).meta:
            raise NoAttribute(name)
        self.fabric.circuits.update_meta(
            self.name, lambda meta: {k: v for k, v in meta.items() if k != key})


def xattr_value(name: str, value: bytes) -> object:
    """user.qfs.tags is comma-separated, parameters is JSON within meta.json's bounds, the
    rest plain UTF-8 text."""
    try:
        text = value.decode()
    except UnicodeDecodeError as exc:
        raise Invalid(f"user.qfs.{name} must be UTF-8") from exc
    if name == "tags":
        return [t.strip() for t in text.split(",") if t.strip()]
    if name == "parameters":
        parsed = bounded_json(value, "user.qfs.parameters")
        if not isinstance(parsed, dict):
            raise Invalid("user.qfs.parameters must be a JSON object")
        return parsed
    return text


class ResultsDir(CircuitPart):
    """results/: <run>.json documents (any name validate_result_name takes, EINVAL else)
    and <run>.png histograms (listed once drawn). rm of a result deletes it; rmdir is
    ENOTEMPTY while results remain, else a no-op (the directory is virtual)."""

    keeps_scratch = True

    async def lookup(self, name: str) -> Entry:
        run = picture_run(name)
        self.check_filled(name, data=run is None)
        if self.fabric.scratch.find(self.path, name) is not None:
            return self.scratch_entry(name)
        if run is not None:
            return await result_picture(self.fabric, self.child(name), self.name, run)
        return ResultFile(self.fabric, self.child(name), self.name, name)

    async def list(self) -> Listing:
        circuits = self.fabric.circuits
        entries: Entries = [
            (run, ResultFile(self.fabric, self.child(run), self.name, run))
            for run, _size in circuits.results(self.name)]
        for run, _entry in list(entries):
            stem = run[: -len(".json")]
            if circuits.has_result_picture(self.name, stem):  # listed once drawn
                picture = f"{stem}.{PICTURE}"
                entries.append((picture, await result_picture(
                    self.fabric, self.child(picture), self.name, stem)))
        return entries + self.scratch_entries()

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        if not is_scratch_name(name) and picture_run(name) is None:
            validate_result_name(name)
        return await self.create_scratch_or_target(name, mode, uid, gid, scratch=False)

    async def commit_target(self, name: str) -> NewFile | None:
        fabric, circuit, path = self.fabric, self.name, self.child(name)
        fabric.circuits.get(circuit)

        async def computed(data: bytes, uid: int) -> None:
            await accept_derived(fabric, path, data)

        async def result(data: bytes, uid: int) -> None:
            fabric.circuits.put_result(circuit, name, data)

        return NewFile(fabric, path, computed if picture_run(name) else result, circuit)

    async def remove_child(self, name: str) -> None:
        if picture_run(name) is None:
            self.fabric.circuits.delete_result(self.name, name)
        else:  # a histogram goes with its result, which rm -r may have deleted first
            self.hide(name)


class SimilarDir(CircuitPart):
    """similar/: `<rank>-<other>` links to circuits shaped like this one's latest version,
    best first (none when circuit_fs.index_types lacks `semantic`). Into a circuit being
    written back, the links (and tar's placeholder files for them) are accepted; they are
    computed again once the circuit is listed."""

    @property
    def keeps_scratch(self) -> bool:  # type: ignore[override]
        return self.filling()

    async def lookup(self, name: str) -> Entry:
        self.check_filled(name)
        fill = self.fabric.circuits.filling(self.name)
        target = fill.written.get(self.rel(name)) if fill is not None else None
        if target:
            return Symlink(self.fabric, self.child(name), target, self.attrs.mtime_ns)
        if self.fabric.scratch.find(self.path, name) is not None:
            return self.scratch_entry(name)
        if name in dict(await self.similar()):
            return self._link(name)
        raise NotFound(f"{self.where()}/{name}")

    async def list(self) -> Listing:
        return [(entry, self._link(entry)) for entry, _score in await self.similar()]

    def _link(self, entry: str) -> Symlink:
        """A ranked link, its name and attributes kept by the kernel for a second (`ls -l`
        then asks only for each target): a ranking changed by another circuit's change
        shows in the next listing at once, and in a lookup within that second."""
        return Symlink(self.fabric, self.child(entry), similar_target(entry),
                       self.attrs.mtime_ns, DIR_TIMEOUT)

    async def similar(self) -> Ranked:
        """Ranked `<rank>-<name>` entries of circuits shaped like `name`'s latest version."""
        fabric = self.fabric
        if "semantic" not in fabric.index_types:
            return []
        limit = fabric.config.circuit_fs.similar_result_limit
        ranked = await made_now_or_in_thread(
            lambda: fabric.circuits.similar_kept(self.name, limit),
            lambda: fabric.circuits.similar_to(self.name, limit))
        return [(f"{i:02d}-{n}", score) for i, (n, score) in enumerate(ranked, 1)]

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        if not self.keeps_scratch:
            return await super().create(name, mode, uid, gid)
        return await self.create_scratch_or_target(name, mode, uid, gid, scratch=True)

    async def remove_child(self, name: str) -> None:
        await self.lookup(name)
        self.hide(name)

    async def unlink(self, name: str) -> None:
        """tar x replaces its placeholder by the link at its end: the ranking may name
        that link by then (the circuit it points to was written back meanwhile), so
        the placeholder's name stays hidden until the link is written."""
        await super().unlink(name)
        if self.filling():
            self.hide(name)

    async def symlink(self, name: str, target: str) -> None:
        if not self.filling():
            await super().symlink(name, target)
            return
        self.wrote(name, target)


def similar_target(entry: str) -> str:
    """`NN-<other>` links to the other circuit's latest.qasm, not to its directory: a link
    to a sibling directory makes find -L, grep -R and diff -r walk an exponential tree."""
    return f"../../{entry.split('-', 1)[1]}/latest.qasm"


class CompiledDir(CircuitPart):
    """compiled/ (unlisted in the circuit): one directory per device, the default one or any
    configured under /devices; ENOENT for another name."""

    async def lookup(self, name: str) -> Entry:
        self.check_filled(name)
        device = device_spec(self.fabric, name)
        return CompiledDeviceDir(self.fabric, self.child(name),
                                 directory(self.attrs.mtime_ns, 0o555, timeout=0.0), device)

    def names(self) -> Names:
        return self.fabric.qubits.device_names()


class CompiledDeviceDir(CircuitPart):
    """compiled/<device>/vN.{qasm,qpy,report.json}: version N transpiled for the device
    (in a worker, on first read), seeded and cached; EINVAL for a version the device cannot
    hold (not listed). Re-asked at each lookup: meta.json's optimization_level may change
    what it holds."""

    def __init__(self, fabric: Fabric, path: Path, attrs: Attrs, device: DeviceSpec) -> None:
        super().__init__(fabric, path, attrs)
        self.device = device

    async def lookup(self, name: str) -> Entry:
        self.check_filled(name)
        match = _COMPILED_FILE.match(name)
        if match is None:
            raise NotFound(f"{self.where()}/{name}")
        circuits, n = self.fabric.circuits, int(match.group(1))
        circuit = circuits.get(self.name)
        mtime = max(circuit.version(n).created_ns, circuit.mtime_ns)
        data = await trio.to_thread.run_sync(circuits.compiled, self.name, n, self.device,
                                             match.group(2))
        entry = Constant(self.fabric, self.child(name), data, Attrs(FILE, 0o444, mtime))
        entry.subject = self.name
        return entry

    async def list(self) -> Listing:
        entries = []
        for version in self.fabric.circuits.get(self.name).versions:
            for fmt in COMPILED_FORMATS:
                leaf = f"v{version.n}.{fmt}"
                try:
                    entries.append((leaf, await self.lookup(leaf)))
                except Invalid:
                    continue  # a version this device cannot hold: not listed
        return entries


def device_spec(fabric: Fabric, device: str) -> DeviceSpec:
    """compiled/<device>/: the default device or any configured under /devices."""
    for spec in fabric.qubits.specs:
        if spec.name == device:
            return spec
    raise NotFound(f"no device {device} (devices: {', '.join(fabric.qubits.device_names())})")
