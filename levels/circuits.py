"""Level 3, CircuitFS: versioned OpenQASM circuits with metadata and results, in the
metadata store (its tables: levels/store/meta.py; one write transaction per change).

Records are keyed by name but data (sources, a version's bytes as written, results) by a
stable id, so a rename moves the name's rows (`circuits`, `names`, facets), not the data.
Parsing (slow, CPU-bound, native code on untrusted input) is separate from committing (fast,
one transaction): `prepare_version` parses in a worker process (levels/workers.py, awaited
on trio's thread) and `commit_version` runs where transactions are serialized. Format views and
pictures are made in worker processes too.
"""

import dataclasses
import hashlib
import json
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from levels import compiler, facets, qasm
from levels.compiler import COMPILED_FORMATS, DEFAULT_OPTIMIZATION_LEVEL
from levels.config import CircuitFsConfig
from levels.devices import DeviceSpec
from levels.durations import parse_retention
from levels.errors import (
    Corrupt,
    Exists,
    Invalid,
    NameTooLong,
    NotEmpty,
    NotFound,
    ReadOnly,
    TooBig,
    Unexpressible,
    WorkerDied,
)
from levels.lru import LRU
from levels.pictures import histogram_png
from levels.qasm import (
    SERIALIZED_VIEWS,
    TEXT_DRAWING,
    VIEW_FORMATS,
    CircuitStats,
    ProgramLimits,
    parse_program,
    text_drawing_refusal,
)
from levels.sdkformats import SDK_FORMATS, split_import
from levels.sdkformats import prepare as prepare_written
from levels.sdkformats import render_view as render_sdk_view
from levels.similar import ShapeIndex
from levels.store.meta import MetaStore, Txn
from levels.timestamps import iso_utc, parse_iso
from levels.workers import WorkerPool

MAX_NAME_BYTES = 200
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@=-]*$")
_RESULT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@=-]*\.json$")
PICTURE = "png"
DRAWINGS = (TEXT_DRAWING, PICTURE)  # each drawn alone, when first asked for
# What a cached view costs beyond its bytes: its key and the cache's bookkeeping (~320
# bytes measured with tracemalloc). Bytes bound the view cache, not a count of entries,
# so a tree walk's thousands of small views stay cached.
VIEW_OVERHEAD_BYTES = 320
META_FIELDS: dict[str, type[Any]] = {
    "description": str, "author": str, "tags": list, "parameters": dict, "pinned": list,
    "optimization_level": int}
_MTIME = struct.Struct("<q")

# Called with (name, search document) after a change, or (name, None) after a deletion.
ChangeListener = Callable[[str, dict[str, Any] | None], None]
# Called with (where, what happened) for what a user should hear of (a dropped version).
Notice = Callable[[str, str], None]


def validate_name(name: str, what: str = "circuit name") -> None:
    """Names become path components and Whoosh terms: keep them to a portable set."""
    if len(name.encode()) > MAX_NAME_BYTES:
        raise NameTooLong(f"{what} longer than {MAX_NAME_BYTES} bytes")
    if not _NAME.match(name):
        raise Invalid(
            f"{what} {name!r}: use letters, digits and _ . + @ = -, not starting with . or -"
        )


MAX_COUNT = 2**63  # a count of shots (the plot's integers are 64-bit)


def validate_circuit_name(name: str) -> None:
    """A circuit's name, which cannot end as an import does (`x.qasm`, `x.quil`): writing
    `x.qasm` into /circuits imports circuit `x`, and would meet that directory instead."""
    validate_name(name)
    imported = split_import(name)
    if imported is not None:
        raise Invalid(f"circuit name {name!r} ends as a file imported into /circuits does "
                      f"(cp {name} /circuits/ makes circuit {imported[0]!r})")


def validate_result_name(run: str) -> None:
    if not _RESULT_NAME.match(run) or len(run.encode()) > MAX_NAME_BYTES:
        raise Invalid(f"result name {run!r}: expected <run>.json with a portable name")


@dataclasses.dataclass(frozen=True)
class Version:
    n: int
    created_ns: int
    stats: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.stats["bytes"])


@dataclasses.dataclass
class Circuit:
    name: str
    id: str
    created_ns: int
    mtime_ns: int
    meta: dict[str, Any]
    versions: list[Version]
    next_version: int

    @property
    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    def version(self, n: int) -> Version:
        for version in self.versions:
            if version.n == n:
                return version
        raise NotFound(f"{self.name} has no version {n}")

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "created": self.created_ns,
                "mtime": self.mtime_ns,
                "meta": self.meta,
                "versions": [
                    {"n": v.n, "created": v.created_ns, "stats": v.stats} for v in self.versions
                ],
                "next": self.next_version,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, name: str, raw: bytes) -> "Circuit":
        data = json.loads(raw)
        return cls(
            name=name,
            id=data["id"],
            created_ns=data["created"],
            mtime_ns=data["mtime"],
            meta=data["meta"],
            versions=[Version(v["n"], v["created"], v["stats"]) for v in data["versions"]],
            next_version=data["next"],
        )

    def search_document(self) -> dict[str, Any]:
        latest = self.latest
        stats = latest.stats if latest else {}
        return {
            "name": self.name,
            "description": self.meta.get("description", ""),
            "author": self.meta.get("author", ""),
            "tags": list(self.meta.get("tags", [])),
            "gates": sorted(stats.get("gate_counts", {})),
            "qubits": int(stats.get("num_qubits", 0)),
            "depth": int(stats.get("depth", 0)),
        }


@dataclasses.dataclass(frozen=True)
class PreparedVersion:
    """A program that Qiskit accepted, with its statistics; not yet stored. A program
    written in another SDK's format (`written_as`: quil, cirq.json) keeps those bytes in
    `written`; `source` is then the OpenQASM made of it, which every other view reads."""

    source: bytes
    stats: CircuitStats
    written_as: str = ""
    written: bytes = b""

    def version_stats(self) -> dict[str, Any]:
        stats = {**self.stats.as_dict(), "bytes": len(self.source)}
        if self.written_as:
            stats.update(written_as=self.written_as, written_bytes=len(self.written))
        return stats


@dataclasses.dataclass
class Filling:
    """A circuit that a tool may be writing back from a backup, until it is next listed.

    cp -a and tar x create every file with O_EXCL, tar after unlinking what is there, in
    any order: so a circuit made by mkdir (`fresh`) shows only what was written into it, and
    a name unlinked from a circuit is hidden until written again. Into a fresh circuit,
    meanwhile, versions written as latest.qasm float (they give way to the vN.qasm written
    after them), derived files written back are accepted unread, and times set on vN.qasm
    and meta.json's `created` are the versions' and the circuit's own."""

    fresh: bool
    hidden: set[str] = dataclasses.field(default_factory=set)
    written: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> link target
    floating: set[int] = dataclasses.field(default_factory=set)
    times: dict[int, int] = dataclasses.field(default_factory=dict)  # version -> time set

    def shows(self, path: str) -> bool:
        return path in self.written or (not self.fresh and path not in self.hidden)

    def wrote(self, path: str, target: str = "") -> None:
        self.written[path] = target
        self.hidden.discard(path)

    def unlinked(self, path: str) -> None:
        """Hidden again, even if written meanwhile: a second tar x over the circuit unlinks
        what the first wrote, and must then be able to create it."""
        self.written.pop(path, None)
        self.hidden.add(path)


def _source_key(circuit_id: str, n: int) -> bytes:
    return f"{circuit_id}/".encode() + n.to_bytes(8, "big")


def _written_key(circuit_id: str, n: int) -> bytes:
    """Where the bytes of a version written as Quil or Cirq JSON are kept, as written."""
    return _source_key(circuit_id, n) + b"/written"


def _take_rows(txn: Txn, circuit_id: str, n: int) -> tuple[bytes, bytes | None]:
    """Version n's program and, if it was written in another format, its bytes as
    written: read and deleted, for a version that moves to another number."""
    source = txn.get("sources", _source_key(circuit_id, n))
    written = txn.get("sources", _written_key(circuit_id, n))
    if source is None:
        raise Corrupt(f"circuit {circuit_id}: version {n} has no program")
    txn.delete("sources", _source_key(circuit_id, n))
    txn.delete("sources", _written_key(circuit_id, n))
    return source, written


def _put_rows(txn: Txn, circuit_id: str, n: int, source: bytes, written: bytes | None) -> None:
    txn.put("sources", _source_key(circuit_id, n), source)
    if written is not None:
        txn.put("sources", _written_key(circuit_id, n), written)


def _result_key(circuit_id: str, run: str) -> bytes:
    return f"{circuit_id}/{run}".encode()


class CircuitStore:
    def __init__(
        self,
        meta: MetaStore,
        config: CircuitFsConfig,
        workers: WorkerPool,
        on_change: ChangeListener | None = None,
        cache_bytes: int = 64 << 20,
        notice: Notice | None = None,
    ) -> None:
        self._meta = meta
        self._config = config
        self._workers = workers
        # names_with_mtime's last answer and the store snapshot it was read from
        self._listed: tuple[int | None, Sequence[tuple[str, int]]] = (None, ())
        # The shape index of similar/ with the count of circuit changes it was made after.
        # Changes, not the store's snapshot: any commit moves that (a note that a view is
        # unavailable, a ctl command), and a walk then rebuilt the index once per circuit.
        self._shapes: tuple[int | None, ShapeIndex | None] = (None, None)
        self._changes = 0
        self._shaping = threading.Lock()  # one index made at a time, by one thread
        # Retention: with versioning off a circuit is its latest version alone.
        self._kept_versions = config.max_versions_per_artifact if config.versioning_enabled else 1
        self._max_age_s = parse_retention(config.retention_policy)
        self.limits = ProgramLimits(
            max_bytes=config.max_program_bytes, max_qubits=config.max_program_qubits,
            max_operations=config.max_program_operations, max_nesting=config.max_program_nesting)
        self._on_change = on_change or (lambda _name, _doc: None)
        self._notice = notice or (lambda _where, _what: None)
        self._filling: dict[str, Filling] = {}
        self._parsed: LRU[Any] = LRU(max_entries=256)
        # Decoded records by name with the bytes they came from: a stat or open of a
        # circuit's file compares the stored bytes instead of decoding them again.
        self._records: LRU[tuple[bytes, Circuit]] = LRU(
            max_entries=4096, max_bytes=cache_bytes // 8, sizeof=lambda r: 2 * len(r[0]))
        self._sources: LRU[bytes] = LRU(max_entries=4096, max_bytes=cache_bytes // 4,
                                        sizeof=len)
        self._views: LRU[bytes | str] = LRU(
            max_entries=max(1, cache_bytes // VIEW_OVERHEAD_BYTES),
            max_bytes=cache_bytes,
            sizeof=lambda v: len(v) + VIEW_OVERHEAD_BYTES,
        )
        with meta.reading() as txn:
            indexed = facets.current(txn)
        if not indexed:  # a data directory from before the facets index
            self.rebuild_facets()

    def rebuild_facets(self) -> int:
        """Build the structured search index anew from the circuit records (one
        transaction); returns how many circuits it holds."""
        with self._meta.writing() as txn:
            docs = [Circuit.from_json(k.decode(), raw).search_document()
                    for k, raw in txn.scan("circuits")]
            return facets.rebuild(txn, docs)

    def facet_differences(self) -> list[str]:
        """How the structured search index differs from the circuit records (for --check)."""
        with self._meta.reading() as txn:
            docs = [Circuit.from_json(k.decode(), raw).search_document()
                    for k, raw in txn.scan("circuits")]
            return facets.differences(txn, docs)

    def caches(self) -> list[LRU]:
        """The decoded-circuit and format-view caches (their hit rate is a metric)."""
        return [self._parsed, self._views]

    # -- reading -------------------------------------------------------------------------

    def names_with_mtime(self) -> Sequence[tuple[str, int]]:
        """Every circuit name, sorted, with its mtime: the data of `ls -l /circuits`. The
        same list (never change it) while the store holds the same data: reading and
        decoding 10,000 names was 5% of a listing."""
        with self._meta.reading() as txn:
            snapshot, listed = txn.snapshot(), self._listed
            if snapshot is not None and listed[0] == snapshot:
                return listed[1]
            names = [(k.decode(), _MTIME.unpack(v)[0]) for k, v in txn.scan("names")]
        if snapshot is not None:
            self._listed = (snapshot, names)
        return names

    @property
    def changes(self) -> int:
        """How many changes to circuits this store has committed (any circuit's): what a
        holder of derived data compares to know it is still current."""
        return self._changes

    def _changed(self, name: str, document: dict[str, Any] | None) -> None:
        """After a change to circuit `name` is committed: the shape index is out of date,
        and the fabric hears of it (search, the kernel's caches)."""
        self._changes += 1
        self._on_change(name, document)

    def similar_to(self, name: str, limit: int) -> list[tuple[str, float]]:
        """(name, cosine) of the circuits shaped most like `name`'s latest version, best
        first (levels/similar.py), from an index of every circuit's latest shape kept
        until a circuit changes (blocking: use a thread)."""
        with self._shaping:
            changes, kept = self._changes, self._shapes  # before the read: never older data
            with self._meta.reading() as txn:
                # A store without snapshots is shared: other hosts change it unseen here.
                keeps = txn.snapshot() is not None
                target = self._shared(txn, name).latest
                if target is None:
                    return []
                index = kept[1] if keeps and kept[0] == changes else None
                if index is None:
                    self._shapes = (None, None)  # the old index goes before the new is made
                    index = ShapeIndex((c.name, c.latest.stats) for c in (
                        Circuit.from_json(k.decode(), raw) for k, raw in txn.scan("circuits"))
                        if c.latest is not None)
                    if keeps:
                        self._shapes = (changes, index)
        return index.rank_kept(name, target.stats, limit)

    def similar_kept(self, name: str, limit: int) -> list[tuple[str, float]] | None:
        """similar_to's answer where the index is current and has ranked `name` already,
        else None: a lookup or readlink of a ranked link then needs no thread."""
        kept_after, index = self._shapes
        if index is None:  # none made yet, or none kept (a store without snapshots)
            return None
        return index.kept(name, limit) if kept_after == self._changes else None

    def count(self) -> int:
        with self._meta.reading() as txn:
            return sum(1 for _ in txn.scan("names"))

    def mtime(self, name: str) -> int | None:
        """The circuit's mtime, or None when it does not exist (the cheap existence test)."""
        with self._meta.reading() as txn:
            raw = txn.get("names", name.encode())
        return None if raw is None else _MTIME.unpack(raw)[0]

    def get(self, name: str) -> Circuit:
        """The circuit's record, shared with other readers: never change it (a change
        decodes its own copy in its write transaction)."""
        with self._meta.reading() as txn:
            return self._shared(txn, name)

    def all_circuits(self) -> Iterator[Circuit]:
        with self._meta.reading() as txn:
            for key, raw in txn.scan("circuits"):
                yield Circuit.from_json(key.decode(), raw)

    def source(self, name: str, n: int | None = None) -> bytes:
        """The program text of version n (latest when None); b"" for a circuit with none.

        One immutable bytes object per content, shared by every reader: 3,000 opens of a
        1 MB latest.qasm hold 1 MB, not 3 GB (each LMDB read would be a fresh copy)."""
        with self._meta.reading() as txn:
            circuit = self._shared(txn, name)
            if n is None:
                if circuit.latest is None:
                    return b""
                n = circuit.latest.n
            sha256 = circuit.version(n).stats["sha256"]
            shared = self._sources.get(sha256)
            if shared is not None:
                return shared
            raw = txn.get("sources", _source_key(circuit.id, n))
        if raw is None:
            raise NotFound(f"{name} v{n}: source missing from the store")
        self._sources.put(sha256, raw)
        return raw

    def view(self, name: str, n: int, fmt: str) -> bytes:
        """A format view of version n: made_view's, else make_view's (call from a thread)."""
        made = self.made_view(name, n, fmt)
        return made if made is not None else self.make_view(name, n, fmt)

    def made_view(self, name: str, n: int, fmt: str) -> bytes | None:
        """A view rendered already (or the refusal its render recorded), else None: an open
        or a lookup of a rendered view then needs no thread. Counted in the cache's hits
        and misses."""
        stats = self._view_stats(name, n, fmt)
        if stats.get("written_as") == fmt:
            return None  # the bytes as written, read from the store by make_view
        cached = self._views.get((stats["sha256"], name, fmt))  # QPY embeds the name
        return None if cached is None else _view_or_refusal(name, n, fmt, cached)

    def make_view(self, name: str, n: int, fmt: str) -> bytes:
        """The view made_view did not have: the bytes written in that format, or a worker
        renders it (slow: call from a thread). One render makes every serialization of a
        version (one parse); a drawing (text or picture) is made alone, on first demand."""
        stats = self._view_stats(name, n, fmt)
        if stats.get("written_as") == fmt:
            return self.written(name, n)
        made = self._views.peek((stats["sha256"], name, fmt))  # another thread's render
        if made is not None:
            return _view_or_refusal(name, n, fmt, made)
        try:
            if fmt in SDK_FORMATS:  # alone: its SDK is imported only when asked for
                views = {fmt: self._workers.run(render_sdk_view, self.source(name, n), name,
                                                fmt)}
            else:
                formats = (fmt,) if fmt in DRAWINGS else SERIALIZED_VIEWS
                views = self._workers.run(qasm.render_views, self.source(name, n), name,
                                          formats)
        except WorkerDied as exc:
            raise WorkerDied(f"{name} v{n}.{fmt} could not be made: {exc}") from exc
        for each, rendered in views.items():
            self._views.put((stats["sha256"], name, each), rendered)
            if isinstance(rendered, str):
                self._note_unavailable(name, n, each, rendered)
        return _view_or_refusal(name, n, fmt, views[fmt])

    def _view_stats(self, name: str, n: int, fmt: str) -> dict[str, Any]:
        if fmt not in (*VIEW_FORMATS, PICTURE, *SDK_FORMATS):
            raise NotFound(f"no format view .{fmt}")
        return self.get(name).version(n).stats

    def written(self, name: str, n: int) -> bytes:
        """The bytes of version n as written in another SDK's format (vN.quil, ...)."""
        with self._meta.reading() as txn:
            raw = txn.get("sources", _written_key(self._get(txn, name).id, n))
        if raw is None:
            raise NotFound(f"{name} v{n} was not written in another SDK's format")
        return raw

    def _note_unavailable(self, name: str, n: int, fmt: str, reason: str) -> None:
        """Keep why version n has no vN.<fmt> in its stats (stats.json shows it)."""
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            version = next((v for v in circuit.versions if v.n == n), None)
            if version is None or version.stats.get("unavailable_views", {}).get(fmt) == reason:
                return
            unavailable = {**version.stats.get("unavailable_views", {}), fmt: reason}
            circuit.versions = [
                Version(v.n, v.created_ns, {**v.stats, "unavailable_views": unavailable})
                if v is version else v for v in circuit.versions]
            self._put(txn, circuit)

    def compiled(self, name: str, n: int, device: DeviceSpec, fmt: str) -> bytes:
        """Version n transpiled for `device` at meta.json's optimization_level: .qasm, .qpy
        or report.json. Slow on a miss (a worker compiles): call from a thread. One compile
        makes the QPY and report, cached by circuit name (QPY embeds it), source, device and
        level; the OpenQASM 3 is exported from the QPY when first asked for."""
        if fmt not in COMPILED_FORMATS:
            raise NotFound(f"no compiled file .{fmt}")
        circuit = self.get(name)
        sha256 = circuit.version(n).stats["sha256"]
        level = circuit.meta.get("optimization_level", DEFAULT_OPTIMIZATION_LEVEL)
        key = ("compiled", sha256, name, device, level)
        cached = self._views.get((*key, fmt))
        if cached is None and fmt == "qasm":
            compiled_qpy = self.compiled(name, n, device, "qpy")
            try:
                cached = self._workers.run(compiler.openqasm3, compiled_qpy)
            except WorkerDied as exc:
                raise WorkerDied(f"{name} v{n}.qasm for {device.name} could not be made: "
                                 f"{exc}") from exc
            except Unexpressible as exc:
                cached = str(exc)
            self._views.put((*key, fmt), cached)
        if cached is None:
            try:
                made: dict[str, bytes | str] = dict(self._workers.run(
                    compiler.compile_version, self.source(name, n), name, sha256, device,
                    level))
            except WorkerDied as exc:
                raise WorkerDied(f"{name} v{n} could not be compiled for {device.name}: "
                                 f"{exc}") from exc
            except Unexpressible as exc:
                made = dict.fromkeys(("qpy", "report.json"), str(exc))
            for each, data in made.items():
                self._views.put((*key, each), data)
            cached = made[fmt]
        if isinstance(cached, str):
            raise Unexpressible(f"{name} v{n} cannot be compiled for {device.name}: {cached}")
        return cached

    def compared_history(self, name: str) -> dict[int, bool | str | None] | None:
        """`equivalent_to_previous` of each kept version (None for v1, which has none)
        where every comparison is made already, else None: a stat of stats.json then needs
        no thread. Counted in the cache's hits and misses."""
        try:
            return self._history(name, self._compared)
        except LookupError:
            return None

    def history(self, name: str) -> dict[int, bool | str | None]:
        """compared_history's answer, the comparisons it lacked made by workers (slow:
        call from a thread). Cached by the two sources."""
        return self._history(name, self._equivalent)

    def _history(self, name: str, compare: Callable[[str, Version, Version], bool | str]
                 ) -> dict[int, bool | str | None]:
        circuit = self.get(name)
        kept = {v.n: v for v in circuit.versions}
        answers: dict[int, bool | str | None] = {}
        for version in circuit.versions:
            previous = kept.get(version.n - 1)
            if version.n == 1:
                answers[version.n] = None
            elif previous is None:
                answers[version.n] = f"unknown (v{version.n - 1} is no longer kept)"
            else:
                answers[version.n] = compare(name, previous, version)
        return answers

    @staticmethod
    def _equivalence_key(previous: Version, version: Version) -> tuple[str, str, str]:
        return ("equivalent", previous.stats["sha256"], version.stats["sha256"])

    def _compared(self, name: str, previous: Version, version: Version) -> bool | str:
        """A comparison's cached answer; LookupError when not compared yet."""
        cached = self._views.get(self._equivalence_key(previous, version))
        if cached is None:
            raise LookupError(f"{name} v{version.n} not compared yet")
        return json.loads(cached)

    def _equivalent(self, name: str, previous: Version, version: Version) -> bool | str:
        key = self._equivalence_key(previous, version)
        cached = self._views.peek(key)  # compared_history, which came first, counted it
        if cached is None:
            try:
                answer = self._workers.run(compiler.equivalent,
                                           self.source(name, previous.n),
                                           self.source(name, version.n))
            except WorkerDied as exc:  # cached too: it would stop the next worker as well
                answer = f"unknown (the comparison could not finish: {exc})"
            cached = json.dumps(answer).encode()
            self._views.put(key, cached)
        return json.loads(cached)

    def made_diff(self, name: str, n: int) -> bytes | None:
        """vN.diff made already, else None (counted in the cache's hits and misses)."""
        made = self._views.get(self._diff_key(self.get(name), n))
        assert not isinstance(made, str)
        return made

    def make_diff(self, name: str, n: int) -> bytes:
        """vN.diff, the unified diff of vN-1 -> vN, that made_diff did not have (a worker
        diffs: call from a thread)."""
        key = self._diff_key(self.get(name), n)
        made = self._views.peek(key)  # another thread's
        if made is None:
            try:
                made = self._workers.run(compiler.unified_diff, self.source(name, n - 1),
                                         self.source(name, n), f"v{n - 1}.qasm", f"v{n}.qasm")
            except WorkerDied as exc:
                raise WorkerDied(f"{name} v{n}.diff could not be made: {exc}") from exc
            self._views.put(key, made)
        assert isinstance(made, bytes)
        return made

    @staticmethod
    def _diff_key(circuit: Circuit, n: int) -> tuple[str, str, str, int]:
        """The cache key of vN.diff; NotFound where vN-1 is not kept."""
        if all(v.n != n - 1 for v in circuit.versions):
            raise NotFound(f"{circuit.name} v{n}.diff: there is no v{n - 1} to compare with")
        return ("diff", circuit.version(n - 1).stats["sha256"],
                circuit.version(n).stats["sha256"], n)

    def serialized(self, name: str, n: int) -> bool:
        """Whether every serialization of version n is made already (or known not to hold
        it): a listing then needs no worker."""
        stats = self.get(name).version(n).stats
        return all(self._views.peek((stats["sha256"], name, fmt)) is not None
                   for fmt in SERIALIZED_VIEWS)

    def drawn(self, name: str, n: int, fmt: str) -> bool:
        """Whether drawing vN.<fmt> is made already: listings show a picture once drawn,
        and a text drawing's size."""
        stats = self.get(name).version(n).stats
        return isinstance(self._views.peek((stats["sha256"], name, fmt)), bytes)

    def result_picture(self, name: str, run: str) -> bytes:
        """The histogram of results/<run>.json as PNG (slow on a miss: call from a thread)."""
        document = self.result(name, f"{run}.json")
        key = ("histogram", hashlib.sha256(document).hexdigest())
        cached = self._views.get(key)
        if cached is None:
            try:
                counts = json.loads(document)["counts"]
                if not isinstance(counts, dict) or not counts or not all(
                        type(n) in (int, float) and 0 <= n < MAX_COUNT for n in counts.values()):
                    raise TypeError("not a mapping of outcomes to counts")
            except (KeyError, TypeError, ValueError) as exc:
                raise NotFound(f"{name} result {run} has no counts to draw ({exc})") from exc
            cached = self._workers.run(histogram_png, counts, f"{name}: {run}")
            self._views.put(key, cached)
        assert isinstance(cached, bytes)
        return cached

    def has_result_picture(self, name: str, run: str) -> bool:
        try:
            document = self.result(name, f"{run}.json")
        except NotFound:
            return False
        key = ("histogram", hashlib.sha256(document).hexdigest())
        return isinstance(self._views.peek(key), bytes)

    def circuit(self, name: str, n: int | None = None) -> Any:
        """The parsed QuantumCircuit of version n (latest when None), cached by content."""
        circuit = self.get(name)
        version = circuit.version(n) if n is not None else circuit.latest
        if version is None:
            raise Invalid(f"circuit {name} has no version yet")
        return self._circuit(name, version.n, version.stats["sha256"])

    def _circuit(self, name: str, n: int, sha256: str) -> Any:
        circuit = self._parsed.get(sha256)
        if circuit is None:
            circuit = parse_program(self.source(name, n), self.limits)
            self._parsed.put(sha256, circuit)
        return circuit

    def results(self, name: str) -> list[tuple[str, int]]:
        """(run file name, size) of every stored result of this circuit."""
        with self._meta.reading() as txn:
            circuit = self._get(txn, name)
            prefix = f"{circuit.id}/".encode()
            return [(k[len(prefix) :].decode(), len(v)) for k, v in txn.scan("results", prefix)]

    def result(self, name: str, run: str) -> bytes:
        with self._meta.reading() as txn:
            circuit = self._get(txn, name)
            raw = txn.get("results", _result_key(circuit.id, run))
        if raw is None:
            raise NotFound(f"{name} has no result {run}")
        return raw

    # -- changing ------------------------------------------------------------------------

    def create(self, name: str) -> Circuit:
        validate_circuit_name(name)
        now = time.time_ns()
        circuit = Circuit(name, uuid.uuid4().hex, now, now, {}, [], 1)
        with self._meta.writing() as txn:
            if txn.get("circuits", name.encode()) is not None:
                raise Exists(f"circuit {name} already exists")
            self._put(txn, circuit)
        self._changed(name, circuit.search_document())
        return circuit

    def delete(self, name: str) -> None:
        """Delete a circuit with its versions; refused while it still holds results."""
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            prefix = f"{circuit.id}/".encode()
            if any(True for _ in txn.scan("results", prefix)):
                raise NotEmpty(f"circuit {name} still has results (rm them or use rm -r)")
            for key, _ in list(txn.scan("sources", prefix)):
                txn.delete("sources", key)
            txn.delete("circuits", name.encode())
            txn.delete("names", name.encode())
            facets.update(txn, name, None)
        self._filling.pop(name, None)
        self._changed(name, None)

    def rename(self, old: str, new: str) -> None:
        validate_circuit_name(new)
        with self._meta.writing() as txn:
            circuit = self._get(txn, old)
            if txn.get("circuits", new.encode()) is not None:
                raise Exists(f"circuit {new} already exists")
            txn.delete("circuits", old.encode())
            txn.delete("names", old.encode())
            facets.update(txn, old, None)
            circuit.name = new
            circuit.mtime_ns = time.time_ns()
            self._put(txn, circuit)
        self._filling.pop(old, None)
        self._changed(old, None)
        self._changed(new, circuit.search_document())

    async def prepare_version(self, source: bytes, written_as: str = "qasm") -> PreparedVersion:
        """Check, parse and measure a new program in a worker process (awaited on trio's
        thread). A program the parser cannot survive is refused, never retried here.
        `written_as` is the format of the bytes: qasm, or a writable SDK format (quil,
        cirq.json), whose version keeps these bytes and the OpenQASM made of them."""
        if len(source) > self.limits.max_bytes:
            qasm.check_source(source, self.limits)  # refuses before the bytes travel
        try:
            if written_as == "qasm":
                return PreparedVersion(source, await self._workers.run_async(
                    qasm.prepare, source, self.limits))
            program, stats = await self._workers.run_async(prepare_written, written_as, source,
                                                           self.limits)
        except WorkerDied as exc:
            raise Invalid(f"the parser could not handle this program: {exc}") from exc
        # A version is what was written: its hash, so a new text is a new version.
        stats = dataclasses.replace(stats, sha256=hashlib.sha256(source).hexdigest())
        return PreparedVersion(program, stats, written_as, source)

    def commit_version(self, name: str, prepared: PreparedVersion, create: bool = False) -> int:
        """Store a prepared program as the next version (one transaction); returns its number.

        Content equal to the latest version is not a new version. Unpinned versions beyond
        max_versions_per_artifact are dropped, oldest first, each with a notice.
        """
        if create:
            validate_circuit_name(name)
        fill = self._filling.get(name)
        first_new = self.get(name).next_version if fill is not None else 0
        with self._meta.writing() as txn:
            circuit, n, dropped = self._commit_in(txn, name, prepared, create,
                                                  retain=fill is None or not fill.fresh)
        if fill is not None and fill.fresh and n >= first_new:
            fill.floating.add(n)
        self._dropped(name, dropped)
        self._changed(name, circuit.search_document())
        return n

    # -- filling a circuit made by mkdir (restoring a backup) --------------------------

    def begin_filling(self, name: str) -> None:
        """A circuit made by mkdir: it shows what is written into it until listed."""
        self._filling[name] = Filling(fresh=True)

    def filling(self, name: str) -> Filling | None:
        return self._filling.get(name)

    def hide(self, name: str, path: str) -> None:
        """A name unlinked from the circuit: hidden until written again or listed."""
        self._filling.setdefault(name, Filling(fresh=False)).unlinked(path)

    def set_version_time(self, name: str, n: int, created_ns: int) -> None:
        """A time set on vN.qasm while a fresh circuit is filled is version n's."""
        fill = self._filling[name]
        fill.times[n] = created_ns
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            if all(v.n != n for v in circuit.versions):
                return  # its commit takes the time
            circuit.versions = [Version(v.n, created_ns, v.stats) if v.n == n else v
                                for v in circuit.versions]
            self._put(txn, circuit)
        self._changed(name, circuit.search_document())  # latest.qasm's time may be this

    def end_filling(self, name: str) -> None:
        self._filling.pop(name, None)

    def restore_needed(self, name: str, n: int, source: bytes) -> bool:
        """Whether bytes written as vN.qasm must be parsed and restored: False when vN holds
        them already; ReadOnly when vN holds other bytes (versions are immutable), unless vN
        only floats (made by latest.qasm while the circuit is being filled). A floating vN
        that holds them is version N from then on: it no longer gives way to the versions
        written after it (a later vM with the same program would otherwise take its place)."""
        circuit = self.get(name)
        if all(v.n != n for v in circuit.versions):
            return True
        fill = self._filling.get(name)
        if self.source(name, n) == source:
            if fill is not None:
                fill.floating.discard(n)
            return False
        if fill is None or n not in fill.floating:
            raise ReadOnly(f"{name} v{n}.qasm exists with other content (versions are "
                           f"immutable: write latest.qasm to make a new version)")
        return True

    def restore_version(self, name: str, n: int, prepared: PreparedVersion) -> None:
        """Store a program written as vN.qasm as version n itself (a backup written back).

        Floating versions (see Filling) with the same program are this version, written
        earlier as latest.qasm: they go; the other floating versions move after the newest.
        A version that retention would drop at once is refused."""
        fill = self._filling.get(name)
        floating = fill.floating if fill is not None else set()
        sha256 = prepared.stats.sha256
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            fixed = {v.n: v for v in circuit.versions if v.n not in floating}
            if n in fixed:
                if fixed[n].stats["sha256"] == sha256:
                    return
                raise ReadOnly(f"{name} v{n}.qasm exists with other content")
            moving = [v for v in circuit.versions if v.n in floating]
            rows = {v.n: _take_rows(txn, circuit.id, v.n) for v in moving}
            now = time.time_ns()
            fixed[n] = Version(n, fill.times.get(n, now) if fill else now,
                               prepared.version_stats())
            _put_rows(txn, circuit.id, n, prepared.source,
                      prepared.written if prepared.written_as else None)
            following = max(fixed) + 1
            floated = set()
            for v in (v for v in moving if v.stats["sha256"] != sha256):
                fixed[following] = Version(following, v.created_ns, v.stats)
                _put_rows(txn, circuit.id, following, *rows[v.n])
                floated.add(following)
                following += 1
            circuit.versions = sorted(fixed.values(), key=lambda v: v.n)
            circuit.next_version = max(circuit.next_version, following)
            circuit.mtime_ns = now
            # Into a circuit made by mkdir, retention waits for the next commit after the
            # filling: a backup written newest first brings its pins (meta.json) last.
            dropped = [] if fill is not None and fill.fresh else self._retain(txn, circuit)
            if n in dropped:
                raise Invalid(f"{name} v{n} would be dropped at once: {self._retention_rule()}")
            self._put(txn, circuit)
        if fill is not None:
            fill.floating = floated
        self._dropped(name, dropped)
        self._changed(name, circuit.search_document())

    def commit_many(self, names: list[str], prepared: PreparedVersion) -> None:
        """Bulk load: the same program as a version of many circuits, in one transaction."""
        for name in names:
            validate_circuit_name(name)
        with self._meta.writing() as txn:
            commits = [self._commit_in(txn, name, prepared, True) for name in names]
        for circuit, _n, dropped in commits:
            self._dropped(circuit.name, dropped)
            self._changed(circuit.name, circuit.search_document())

    def _commit_in(
        self, txn: Txn, name: str, prepared: PreparedVersion, create: bool, retain: bool = True
    ) -> tuple[Circuit, int, list[int]]:
        raw = txn.get("circuits", name.encode())
        now = time.time_ns()
        if raw is None:
            if not create:
                raise NotFound(f"no circuit {name}")
            circuit = Circuit(name, uuid.uuid4().hex, now, now, {}, [], 1)
        else:
            circuit = Circuit.from_json(name, raw)
        latest = circuit.latest
        if latest is not None and latest.stats["sha256"] == prepared.stats.sha256:
            return circuit, latest.n, []
        version = Version(circuit.next_version, now, prepared.version_stats())
        circuit.versions.append(version)
        circuit.next_version += 1
        circuit.mtime_ns = now
        dropped = self._retain(txn, circuit) if retain else []
        _put_rows(txn, circuit.id, version.n, prepared.source,
                  prepared.written if prepared.written_as else None)
        self._put(txn, circuit)
        return circuit, version.n, dropped

    def _retain(self, txn: Txn, circuit: Circuit) -> list[int]:
        """Drop the oldest unpinned versions beyond the count kept, and unpinned versions
        older than retention_policy except the newest; pinned versions are kept and do not
        count towards the limit."""
        pinned = set(circuit.meta.get("pinned", ()))
        unpinned = [v for v in circuit.versions if v.n not in pinned]
        dropped = {v.n for v in unpinned[: max(0, len(unpinned) - self._kept_versions)]}
        if self._max_age_s is not None and circuit.versions:
            newest = max(v.n for v in circuit.versions)
            cutoff = time.time_ns() - int(self._max_age_s * 1e9)
            dropped |= {v.n for v in unpinned if v.created_ns < cutoff and v.n != newest}
        for n in dropped:
            txn.delete("sources", _source_key(circuit.id, n))
            txn.delete("sources", _written_key(circuit.id, n))
        circuit.versions = [v for v in circuit.versions if v.n not in dropped]
        return sorted(dropped)

    def _retention_rule(self) -> str:
        config = self._config
        rule = (f"only the newest {self._kept_versions} unpinned versions are kept ("
                + ("max_versions_per_artifact" if config.versioning_enabled
                   else "versioning_enabled: false") + ")")
        if self._max_age_s is not None:
            rule += f", none older than {config.retention_policy} (retention_policy)"
        return rule

    def _dropped(self, name: str, dropped: list[int]) -> None:
        for n in dropped:
            self._notice(f"retention /circuits/{name}",
                         f"dropped v{n}: {self._retention_rule()}; pin one with "
                         f"setfattr -n user.qfs.pinned -v 1 v<N>.qasm")

    def pin(self, name: str, n: int, pinned: bool) -> None:
        """Keep version n beyond retention (or no longer)."""
        self.get(name).version(n)

        def change(meta: dict[str, Any]) -> dict[str, Any]:
            pins = set(meta.get("pinned", ()))
            if pinned:
                pins.add(n)
            else:
                pins.discard(n)
            return _with_pins(meta, pins)

        self.update_meta(name, change)

    def set_meta(self, name: str, document: bytes) -> None:
        """Replace the user metadata from meta.json bytes, validated; `created` is kept, and
        so are the pins when the document names none (a pin guards a version from loss)."""
        meta = parse_meta(document)
        created_ns = None
        fill = self._filling.get(name)
        if fill is not None and fill.fresh:  # written back: it keeps its creation time
            created = json.loads(document).get("created")
            if isinstance(created, str):
                created_ns = parse_iso(created)

        def change(old: dict[str, Any]) -> dict[str, Any]:
            return _with_pins(meta, set((meta if "pinned" in meta else old).get("pinned", ())))

        self.update_meta(name, change, created_ns)

    def set_created(self, name: str, created_ns: int) -> None:
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            circuit.created_ns = created_ns
            self._put(txn, circuit)

    def update_meta(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]],
                    created_ns: int | None = None) -> None:
        """Change the user metadata (a meta.json write, an extended attribute), and the
        creation time where given, in one transaction. What meta.json then shows must pass
        parse_meta, so that it can be written back (cp -a)."""
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            circuit.meta = change(dict(circuit.meta))
            if created_ns is not None:
                circuit.created_ns = created_ns
            parse_meta(self.meta_json(circuit), "meta.json as it would read")
            circuit.mtime_ns = time.time_ns()
            self._put(txn, circuit)
        self._changed(name, circuit.search_document())

    def put_result(self, name: str, run: str, document: bytes) -> None:
        validate_result_name(run)
        try:
            json.loads(document, parse_constant=_not_json)
        except RecursionError:
            raise Invalid(f"result {run} nests too deep") from None
        except ValueError as exc:
            raise Invalid(f"result {run} is not JSON: {exc}") from exc
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            txn.put("results", _result_key(circuit.id, run), document)

    def delete_result(self, name: str, run: str) -> None:
        with self._meta.writing() as txn:
            circuit = self._get(txn, name)
            key = _result_key(circuit.id, run)
            if txn.get("results", key) is None:
                raise NotFound(f"{name} has no result {run}")
            txn.delete("results", key)

    # -- rendering -----------------------------------------------------------------------

    @staticmethod
    def meta_json(circuit: Circuit) -> bytes:
        document = {
            "description": circuit.meta.get("description", ""),
            "author": circuit.meta.get("author", ""),
            "tags": circuit.meta.get("tags", []),
            "parameters": circuit.meta.get("parameters", {}),
            "pinned": circuit.meta.get("pinned", []),
            "optimization_level": circuit.meta.get("optimization_level",
                                                   DEFAULT_OPTIMIZATION_LEVEL),
            "created": iso_utc(circuit.created_ns),
        }
        return json.dumps(document, indent=2).encode() + b"\n"

    @staticmethod
    def stats_json(circuit: Circuit, history: dict[int, bool | str | None]) -> bytes:
        """stats.json, with each version's `equivalent_to_previous` from `history`."""
        document = {
            "name": circuit.name,
            "latest": circuit.latest.n if circuit.latest else None,
            "versions": [
                {"version": v.n, "created": iso_utc(v.created_ns), **_shown_stats(v.stats),
                 "equivalent_to_previous": history.get(v.n)}
                for v in circuit.versions
            ],
        }
        return json.dumps(document, indent=2).encode() + b"\n"

    # -- internals -----------------------------------------------------------------------

    def _shared(self, txn: Txn, name: str) -> Circuit:
        raw = self._record(txn, name)
        cached = self._records.get(name)
        if cached is not None and cached[0] == raw:
            return cached[1]
        circuit = Circuit.from_json(name, raw)
        self._records.put(name, (raw, circuit))
        return circuit

    @staticmethod
    def _record(txn: Txn, name: str) -> bytes:
        raw = txn.get("circuits", name.encode())
        if raw is None:
            raise NotFound(f"no circuit {name}")
        return raw

    @classmethod
    def _get(cls, txn: Txn, name: str) -> Circuit:
        """A circuit's own copy of its record, for a change to make in `txn`."""
        return Circuit.from_json(name, cls._record(txn, name))

    @staticmethod
    def _put(txn: Txn, circuit: Circuit) -> None:
        txn.put("circuits", circuit.name.encode(), circuit.to_json())
        txn.put("names", circuit.name.encode(), _MTIME.pack(circuit.mtime_ns))
        facets.update(txn, circuit.name, circuit.search_document())


# meta.json is kept in the circuit's record, read at every stat of the circuit's files:
# bounded in bytes, and in nesting so that every later encode of it succeeds.
MAX_META_BYTES = 64 * 1024
MAX_META_DEPTH = 32


def bounded_json(document: bytes, what: str) -> Any:
    """JSON `what` holds, within MAX_META_BYTES and MAX_META_DEPTH, its strings Unicode
    text (JSON's escapes can spell a lone surrogate, which no UTF-8 reader could be given:
    getfattr of such a field was EIO)."""
    if len(document) > MAX_META_BYTES:
        raise TooBig(f"{what} holds at most {MAX_META_BYTES} bytes, not {len(document)}")
    too_deep = Invalid(f"{what} nests deeper than {MAX_META_DEPTH} levels")
    try:  # strict: NaN and Infinity would be served back as JSON no parser takes
        data = json.loads(document or b"{}", parse_constant=_not_json)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise Invalid(f"{what} is not valid JSON: {exc}") from exc
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if not value.isascii() and not _is_unicode_text(value):
                raise Invalid(f"{what}: {value!r} is not Unicode text (a lone surrogate)")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_META_DEPTH:
            raise too_deep
        children = (*value, *value.values()) if isinstance(value, dict) else value
        pending.extend((c, depth + 1) for c in children)
    return data


def _is_unicode_text(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_meta(document: bytes, what: str = "meta.json") -> dict[str, Any]:
    """Validate meta.json (`what` the reasons call it): an object with known fields of the
    right types, within MAX_META_BYTES and MAX_META_DEPTH (bounded_json)."""
    data = bounded_json(document, what)
    if not isinstance(data, dict):
        raise Invalid("meta.json must be a JSON object")
    meta: dict[str, Any] = {}
    for key, value in data.items():
        if key == "created":
            continue  # read-only, always taken from the record
        expected = META_FIELDS.get(key)
        if expected is None:
            raise Invalid(f"meta.json: unknown field {key!r} (known: {', '.join(META_FIELDS)})")
        if not isinstance(value, expected):
            raise Invalid(f"meta.json: {key} must be a {expected.__name__}")
        if key == "tags" and not all(isinstance(t, str) and t.strip() == t != "" and
                                     "," not in t for t in value):
            # user.qfs.tags lists them comma-separated, as cp -a writes them back
            raise Invalid("meta.json: tags must be non-empty strings with no comma and no "
                          "space at either end")
        if key == "pinned" and not all(type(n) is int and n > 0 for n in value):
            raise Invalid("meta.json: pinned must be a list of version numbers")
        if key == "optimization_level" and (type(value) is not int or not 0 <= value <= 3):
            raise Invalid("meta.json: optimization_level must be 0, 1, 2 or 3 (Qiskit's "
                          "preset pass managers)")
        meta[key] = value
    return meta


def _with_pins(meta: dict[str, Any], pins: set[int]) -> dict[str, Any]:
    """`meta` with `pinned` as a sorted list, or without the key when nothing is pinned."""
    meta = {k: v for k, v in meta.items() if k != "pinned"}
    return {**meta, "pinned": sorted(pins)} if pins else meta


def _not_json(constant: str) -> None:
    """json.loads takes NaN and Infinity, which JSON does not (nor its other readers)."""
    raise ValueError(f"{constant} is not a JSON number")


def _shown_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """A version's stats as stats.json shows them: `unavailable_views` also names a text
    drawing too large to make, which its listing leaves out without trying to draw it."""
    refusal = text_drawing_refusal(stats["size"])
    if refusal is None:
        return stats
    return {**stats, "unavailable_views": {**stats.get("unavailable_views", {}),
                                           TEXT_DRAWING: refusal}}


def _view_or_refusal(name: str, n: int, fmt: str, made: bytes | str) -> bytes:
    """A rendered view's bytes, or the refusal a render recorded instead (its reason)."""
    if isinstance(made, str):
        refusal = TooBig if made.startswith("too large") else Unexpressible
        raise refusal(f"{name} v{n}.{fmt}: {made}")
    return made
