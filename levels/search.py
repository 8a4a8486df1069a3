"""The Whoosh index over circuits: derived data, always rebuildable from LMDB.

A Whoosh commit per change caps indexing near 300 circuits/s (PERF-NOTES), so one
background thread batches changes and commits them every `commit_interval`. The writing
itself (pure-Python Whoosh, a quarter of the daemon's CPU while circuits are copied in)
runs in a child process, so it does not hold the GIL that every FUSE request needs;
searches read the committed segments in this process. A search
first waits for every change submitted before it to be committed (read-your-writes: a
circuit copied in is found by the very next `ls /search/...`), asking the writer to commit
at once rather than at the end of its interval.
"""

import concurrent.futures
import logging
import multiprocessing
import re
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from whoosh import fields, index, qparser
from whoosh.qparser.plugins import FieldAliasPlugin

from levels.errors import Busy, Invalid

log = logging.getLogger("qfs.search")

SCHEMA = fields.Schema(
    name=fields.ID(stored=True, unique=True, sortable=True),
    title=fields.TEXT,
    description=fields.TEXT,
    author=fields.KEYWORD(lowercase=True),
    tags=fields.KEYWORD(lowercase=True, commas=True, scorable=True),
    gates=fields.KEYWORD(lowercase=True),
    qubits=fields.NUMERIC(int),
    depth=fields.NUMERIC(int),
)
DEFAULT_FIELDS = ["title", "description", "tags", "gates", "author"]
ALIASES = {"tags": ["tag"], "gates": ["gate"], "qubits": ["qubit", "num_qubits"]}
MERGE_EVERY = 64  # commits between segment merges under continuous load
MERGE_WHEN_IDLE = 2.0  # seconds without changes before small segments are merged
KNOWN_FIELDS = {"name", *DEFAULT_FIELDS, "qubits", "depth"} | {
    alias for names in ALIASES.values() for alias in names
}
_FIELD_PREFIX = re.compile(r"(?:^|[\s(])([A-Za-z_]+):")
_NAME_WORDS = re.compile(r"[_.+@=-]+")

Document = dict[str, Any]
Documents = Callable[[], Iterable[Document]]


def _fields(doc: Document) -> Document:
    return {
        "name": doc["name"],
        "title": f"{doc['name']} {_NAME_WORDS.sub(' ', doc['name'])}",
        "description": doc.get("description", ""),
        "author": doc.get("author", ""),
        "tags": ",".join(doc.get("tags", [])),
        "gates": " ".join(doc.get("gates", [])),
        "qubits": int(doc.get("qubits", 0)),
        "depth": int(doc.get("depth", 0)),
    }


def _same_schema(schema: fields.Schema) -> bool:
    """Field names and the name column (whoosh schemas do not compare equal after a load)."""
    return set(schema.names()) == set(SCHEMA.names()) and \
        schema["name"].column_type is not None


class SearchIndex:
    """Batched writer thread plus a shared, refreshed searcher."""

    def __init__(self, path: Path, limit: int, commit_interval: float) -> None:
        self._path = path
        self._limit = limit
        self._interval = commit_interval
        self._cond = threading.Condition()
        self._pending: dict[str, Document | None] = {}
        self._submitted = 0  # generation of the newest submitted change
        self._committed = 0  # generation that the index on disk has reached
        self._flush_now = False
        self._closing = False
        self._rebuild_with: Documents | None = None  # a rebuild asked for while running
        self._indexed: set[str] = set()  # names in the index (writer thread only)
        self._writer_pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._in_process = False  # set when no writer process can run
        self._unmerged = 0  # commits since segments were last merged
        self._ready = threading.Event()
        self._failure: str | None = None
        self._index: index.Index | None = None
        self._searcher = None
        self._searcher_commits = -1
        self._commits = 0  # index commits so far, to know when the searcher is stale
        self._search_lock = threading.Lock()
        self._results: dict[str, tuple[int, list[str]]] = {}  # query -> (generation, names)
        self._parser = qparser.MultifieldParser(DEFAULT_FIELDS, SCHEMA)
        self._parser.add_plugin(FieldAliasPlugin(ALIASES))
        self._parser.add_plugin(qparser.GtLtPlugin())
        self._thread: threading.Thread | None = None

    def start(self, documents: Documents, expected: int, force: bool) -> None:
        """Open the index (rebuilding it when missing, corrupt, stale or forced) in the thread."""
        self._thread = threading.Thread(
            target=self._run, args=(documents, expected, force), name="qfs-indexer", daemon=True
        )
        self._thread.start()

    def submit(self, name: str, doc: Document | None) -> None:
        with self._cond:
            self._pending[name] = doc
            self._submitted += 1
            self._cond.notify_all()

    def search(self, query: str) -> list[str]:
        """Names of circuits matching a Whoosh query, sorted (blocking: use a thread).

        Results are cached per query until the next change is submitted, so the several
        FUSE requests of one `ls` (lookup, getattr, opendir) search once.
        """
        parsed = self._parse(query)
        with self._cond:
            cached = self._results.get(query)
            if cached is not None and cached[0] == self._submitted:
                return cached[1]
        self.wait_committed()
        with self._search_lock:
            with self._cond:
                assert self._index is not None
                stale = self._searcher_commits != self._commits
                commits, generation = self._commits, self._committed
            # Searcher.refresh() misses deletion-only commits; reopen after any commit.
            # Searches are serialized, so the old searcher can be closed at once.
            if self._searcher is None or stale:
                if self._searcher is not None:
                    self._searcher.close()
                self._searcher = self._index.searcher()
                self._searcher_commits = commits
            # Unscored matching and names from the sortable column: ls sorts anyway, and
            # scoring plus stored-field reads made broad queries 10x slower.
            reader = self._searcher.reader()
            names = []
            if reader.doc_count_all():  # an empty index's reader has no columns
                column = reader.column_reader("name")
                names = sorted(column[d] for d in self._searcher.docs_for_query(parsed))
            names = names[: self._limit]
        with self._cond:
            if len(self._results) >= 256:
                self._results.clear()
            self._results[query] = (generation, names)
        return names

    def validate(self, query: str) -> None:
        """Refuse a malformed query without running it."""
        self._parse(query)

    def _parse(self, query: str):
        """Whoosh repairs malformed queries silently; refuse them instead, saying why."""
        for opening, closing in ("[]", "()", "{}"):
            if query.count(opening) != query.count(closing):
                raise Invalid(f"bad search query {query!r}: unbalanced {opening}{closing}")
        if query.count('"') % 2:
            raise Invalid(f"bad search query {query!r}: unbalanced quotes")
        for field in _FIELD_PREFIX.findall(query):
            if field not in KNOWN_FIELDS:
                raise Invalid(f"bad search query {query!r}: unknown field {field!r} "
                              f"(known: {', '.join(sorted(KNOWN_FIELDS))})")
        try:
            return self._parser.parse(query)
        except Exception as exc:
            raise Invalid(f"bad search query {query!r}: {exc}") from exc

    def wait_committed(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            raise Busy("the search index is still being rebuilt; try again shortly")
        with self._cond:
            target = self._submitted
            self._flush_now = True
            self._cond.notify_all()
            caught_up = self._cond.wait_for(
                lambda: self._committed >= target or self._closing, timeout)
        if self._failure:
            raise Invalid(f"search index unavailable: {self._failure}")
        if not caught_up:
            raise Busy(f"the search index is {target - self._committed} changes behind; "
                       "try again shortly")

    def rebuild_now(self, documents: Documents, timeout: float = 600.0) -> None:
        """Rebuild the index from `documents` in the writer thread and wait for it."""
        self.wait_committed()
        with self._cond:
            self._rebuild_with = documents
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._rebuild_with is None or self._closing,
                                       timeout)
        if not done:
            raise Busy("the search index rebuild did not finish in time")

    def doc_count(self) -> int:
        self.wait_committed()
        assert self._index is not None
        return self._index.doc_count()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._writer_pool is not None:
            self._writer_pool.shutdown(wait=True)
        with self._search_lock:
            if self._searcher is not None:
                self._searcher.close()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self, documents: Documents, expected: int, force: bool) -> None:
        try:
            self._open(documents, expected, force)
        except Exception as exc:
            log.exception("search index could not be opened or rebuilt")
            self._failure = str(exc)
            self._ready.set()
            return
        self._ready.set()
        while True:
            with self._cond:
                woke = self._cond.wait_for(
                    lambda: self._pending or self._closing or self._rebuild_with is not None,
                    MERGE_WHEN_IDLE if self._unmerged else None)
                rebuild = self._rebuild_with
            if not woke:
                self._merge()  # idle: now merging costs no one a wait
                continue
            if rebuild is not None:
                self._rebuild(rebuild)
                with self._cond:
                    self._commits += 1
                    self._results.clear()
                    self._rebuild_with = None
                    self._cond.notify_all()
                continue
            with self._cond:
                if not self._closing and not self._flush_now:
                    self._cond.wait_for(lambda: self._flush_now or self._closing, self._interval)
                batch, self._pending = self._pending, {}
                generation = self._submitted
                self._flush_now = False
                closing = self._closing
            if batch:
                self._commit(batch)
            with self._cond:
                self._commits += 1 if batch else 0
                self._committed = generation
                self._cond.notify_all()
            if closing and not self._pending:
                return

    def _merge(self) -> None:
        self._in_child(_merge_in_child, str(self._path))
        self._unmerged = 0
        with self._cond:
            self._commits += 1

    def _commit(self, batch: dict[str, Document | None]) -> None:
        """One writer per batch. New circuits are added without the delete lookup that
        update_document costs, and segments are merged only when the writer is idle (or
        after MERGE_EVERY commits): both were most of the indexer's CPU, and a merge inside
        the commit a search waits for made it wait a second."""
        operations: list[tuple[str, Any]] = []
        for name, doc in batch.items():
            if doc is None:
                operations.append(("delete", name))
            else:
                operations.append(("update" if name in self._indexed else "add", _fields(doc)))
        merge = self._unmerged + 1 >= MERGE_EVERY
        try:
            self._in_child(_apply_in_child, str(self._path), operations, merge)
        except Exception:
            self._indexed = self._names_in_index()
            log.exception("search index commit failed; %d changes not indexed", len(batch))
            return
        for name, doc in batch.items():
            if doc is None:
                self._indexed.discard(name)
            else:
                self._indexed.add(name)
        self._unmerged = 0 if merge else self._unmerged + 1

    def _in_child(self, function, *args) -> None:
        """Run a Whoosh write in the child process, or here when no child can be spawned
        (a program read from stdin has no main module for the child to import)."""
        if self._in_process:
            function(*args)
            return
        if self._writer_pool is None:
            self._writer_pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            self._writer_pool.submit(function, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            log.warning("the index writer process died; writing in this process from now on")
            self._writer_pool = None
            self._in_process = True
            function(*args)

    def _names_in_index(self) -> set[str]:
        assert self._index is not None
        with self._index.reader() as reader:
            if reader.doc_count_all() == 0:  # an empty index's reader has no columns
                return set()
            column = reader.column_reader("name")
            return {column[d] for d in reader.all_doc_ids()}

    def _open(self, documents: Documents, expected: int, force: bool) -> None:
        if not force and index.exists_in(str(self._path)):
            try:
                ix = index.open_dir(str(self._path))
                if not _same_schema(ix.schema):
                    log.warning("search index has an older schema: rebuilding")
                elif ix.doc_count() == expected:
                    self._index = ix
                    self._indexed = self._names_in_index()
                    return
                else:
                    log.warning("search index holds %d of %d circuits: rebuilding",
                                ix.doc_count(), expected)
                ix.close()
            except Exception:
                log.warning("search index unreadable: rebuilding", exc_info=True)
        self._rebuild(documents)

    def _rebuild(self, documents: Documents) -> None:
        if self._index is not None:
            self._index.close()
        prepared = [_fields(doc) for doc in documents()]
        self._in_child(_rebuild_in_child, str(self._path), prepared)
        self._indexed = {f["name"] for f in prepared}
        log.info("search index rebuilt with %d circuits", len(self._indexed))
        self._index = index.open_dir(str(self._path))


# -- the writer process: module functions, so that a spawned child can import them ---------


def _apply_in_child(path: str, operations: list[tuple[str, Any]], merge: bool) -> None:
    writer = index.open_dir(path).writer()
    try:
        for kind, value in operations:
            if kind == "delete":
                writer.delete_by_term("name", value)
            elif kind == "update":
                writer.update_document(**value)
            else:
                writer.add_document(**value)
        writer.commit(merge=merge)
    except BaseException:
        writer.cancel()
        raise


def _merge_in_child(path: str) -> None:
    index.open_dir(path).writer().commit(merge=True)


def _rebuild_in_child(path: str, prepared: list[Document]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    Path(path).mkdir(parents=True)
    writer = index.create_in(path, SCHEMA).writer(limitmb=256)
    for document in prepared:
        writer.add_document(**document)
    writer.commit()
