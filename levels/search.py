"""The Whoosh index over circuits: derived data, always rebuildable from LMDB.

A query made only of structured parts (tags, gates, qubits, depth, name) is answered from
the facets index in the metadata store instead (levels/facetquery.py): it is written in the
circuit's own transaction, so it needs no wait for the writer below, and its cost follows
the names returned. Whoosh answers queries with words of text.

A Whoosh commit per change caps indexing near 300 circuits/s (PERF-NOTES), so one
background thread batches changes and commits them every `commit_interval`. The writing
itself (pure-Python Whoosh, a quarter of the daemon's CPU while circuits are copied in)
runs in a child process, so it does not hold the GIL that every FUSE request needs;
searches read the committed segments in this process. A search
first waits for every change submitted before it to be committed (read-your-writes: a
circuit copied in is found by the very next `ls /search/...`), asking the writer to commit
at once rather than at the end of its interval. A write that fails (a full disk) is kept
and retried with backoff, so the index catches up by itself once the cause is gone.
"""

import contextlib
import dataclasses
import errno
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from whoosh import fields, index, qparser, query
from whoosh.qparser import syntax
from whoosh.qparser.plugins import FieldAliasPlugin

from levels import facetquery
from levels.errors import Busy, Disabled, Invalid, NoSpace, QfsError, WorkerDied
from levels.store.meta import MetaStore
from levels.workers import Limits, WorkerPool

log = logging.getLogger("qfs.search")

SCHEMA = fields.Schema(
    name=fields.ID(stored=True, unique=True, sortable=True),
    title=fields.KEYWORD(lowercase=True),  # the name and its word parts, matched by prefix
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
RETRY_FIRST = 0.1  # seconds before the first retry of a failed index write
RETRY_MAX = 5.0  # the longest wait between retries
_FIELD_PREFIX = re.compile(r"(?:^|[\s(])([A-Za-z_]+):")
_NAME_SEPARATORS = re.compile(r"[_.+@=-]+")
_NAME_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_INFIX = {"AND", "OR", "ANDNOT", "ANDMAYBE", "REQUIRE"}  # Whoosh's operators, besides NOT
_QUERY_TOKENS = re.compile(r'"[^"]*"|[\[{][^\]}]*[\]}]|[()]|[^\s()"\[\]{}]+')

Document = dict[str, Any]
Documents = Callable[[], Iterable[Document]]


def _fields(doc: Document) -> Document:
    return {
        "name": doc["name"],
        "title": _name_words(doc["name"]),
        "description": doc.get("description", ""),
        "author": doc.get("author", ""),
        "tags": ",".join(doc.get("tags", [])),
        "gates": " ".join(doc.get("gates", [])),
        "qubits": int(doc.get("qubits", 0)),
        "depth": int(doc.get("depth", 0)),
    }


def _name_words(name: str) -> str:
    """The name, its pieces between separators and their letter, digit and camelCase parts,
    so that a bare word typed as people type names finds it by prefix (`ghz` finds ghz2 and
    ghz_5, `bell` finds my-bell-pair)."""
    pieces = [p for p in _NAME_SEPARATORS.split(name) if p]
    parts = [part for piece in pieces for part in _NAME_PARTS.findall(piece)]
    return " ".join(dict.fromkeys([name, *pieces, *parts]))


def _same_schema(schema: fields.Schema) -> bool:
    """Field names and kinds, and the name column (whoosh schemas do not compare equal
    after a load); an index of another schema is rebuilt."""
    return set(schema.names()) == set(SCHEMA.names()) and \
        all(type(schema[n]) is type(SCHEMA[n]) for n in SCHEMA.names()) and \
        schema["name"].column_type is not None


def _bad(text: str, why: str) -> Invalid:
    return Invalid(f"bad search query {text!r}: {why}")


def _check_operators(text: str) -> None:
    """Whoosh reads an operator that lacks a term as a word, or drops it: refuse instead."""
    waiting = None  # an operator still without the term after it
    term_before = False
    for token in _QUERY_TOKENS.findall(text):
        if token in _INFIX:
            if not term_before:
                raise _bad(text, f"{token} needs a term before it")
            waiting, term_before = token, False
        elif token == "NOT":
            waiting, term_before = token, False
        elif token == "(":
            term_before = False
        elif token == ")":
            if waiting:
                raise _bad(text, f"{waiting} needs a term after it")
            term_before = True
        else:
            waiting, term_before = None, True
    if waiting:
        raise _bad(text, f"{waiting} needs a term after it")
    if not term_before:
        raise _bad(text, "no search terms")


def _check_syntax(text: str, node) -> None:
    """Whoosh's leftovers of what it could not read: a field without a value, an operator
    glued to a parenthesis."""
    if isinstance(node, syntax.WordNode):
        if node.text.endswith(":") and node.text[:-1] in KNOWN_FIELDS:
            raise _bad(text, f"{node.text} has no value (write it right after the colon)")
        if node.text in _INFIX or node.text == "NOT":
            raise _bad(text, f"{node.text} needs spaces around it")
    for child in getattr(node, "nodes", ()):
        _check_syntax(text, child)


def _runnable(text: str, parsed: query.Query) -> query.Query:
    """Refuse the parts Whoosh marked as errors (a range of words on a number field) and
    adapt the rest to the index: a phrase on a field without positions is its terms (an
    exact tag: `tag:"error correction"`), a word on the name's words is a prefix."""

    def adapt(part: query.Query) -> query.Query:
        error = getattr(part, "error", None)
        if error is not None:
            raise _bad(text, str(error))
        if isinstance(part, query.Phrase):
            field = SCHEMA[part.fieldname]
            if field.self_parsing():
                raise _bad(text, f"{part.fieldname}: takes a number or a range, not a phrase")
            if not field.format.supports("positions"):
                terms = [query.Term(part.fieldname, word) for word in part.words]
                return terms[0] if len(terms) == 1 else query.And(terms)
        if type(part) is query.Term and part.fieldname == "title":
            return query.Prefix("title", part.text, boost=part.boost)
        return part

    return parsed.accept(adapt).normalize()


@dataclasses.dataclass
class _Results:
    """A query's names as of the `generation`-th change submitted; as a set once looked
    up by name."""

    generation: int
    names: list[str]
    members: frozenset[str] | None = None


class SearchIndex:
    """Batched writer thread plus a shared, refreshed searcher."""

    def __init__(self, path: Path, limit: int, commit_interval: float,
                 facets: MetaStore | None = None, text: bool = True,
                 off_key: str = "circuit_fs.index_types") -> None:
        self._path = path.absolute()  # as the writer process sees it: its cwd is not ours
        self._facets = facets  # the store holding the facets index, when it is used
        self.kept = text  # the Whoosh index is kept (circuit_fs.index_types has `text`)
        self._off_key = off_key  # the setting that turned off what a refused query needs
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
        self._writer_pool: WorkerPool | None = None
        self._in_process = False  # set when no writer process can run
        self._unmerged = 0  # commits since segments were last merged
        self._ready = False  # the index is open
        self._error: str | None = None  # why the writer's last attempt failed, while failing
        self._failed = 0  # failed attempts so far: a search waits for its retry's outcome
        self._streak = 0  # failed attempts in a row, for the backoff
        self._retry_now = False  # a search asks the failing writer to retry at once
        self._index: index.Index | None = None
        self._searcher: Any = None
        self._searcher_commits = -1
        self._commits = 0  # index commits so far, to know when the searcher is stale
        self._search_lock = threading.Lock()
        self._results: dict[str, _Results] = {}  # by query
        self._parsed: dict[str, query.Query] = {}  # query -> parsed, for the lookup's twin
        self._parser = qparser.MultifieldParser(DEFAULT_FIELDS, SCHEMA)
        self._parser.add_plugin(FieldAliasPlugin(ALIASES))
        self._parser.add_plugin(qparser.GtLtPlugin())
        self._thread: threading.Thread | None = None

    def start(self, documents: Documents, expected: int, force: bool) -> None:
        """Open the index (rebuilding it when missing, corrupt, stale or forced) in the thread."""
        if not self.kept:
            return
        self._thread = threading.Thread(
            target=self._run, args=(documents, expected, force), name="qfs-indexer", daemon=True
        )
        self._thread.start()

    def submit(self, name: str, doc: Document | None) -> None:
        if not self.kept:
            with self._cond:  # the cached results of structured searches are stale now
                self._submitted += 1
            return
        with self._cond:
            # The writer waits for something pending, then gathers a batch for an interval:
            # only the first change of a batch wakes it (one wake per commit of a cp, each
            # taking the GIL from the requests, cost a cp 1-7%).
            wake = not self._pending
            self._pending[name] = doc
            self._submitted += 1
            if wake:
                self._cond.notify_all()

    def search(self, text: str) -> list[str]:
        """Names of circuits matching a Whoosh query, sorted (blocking: use a thread).

        Results are cached per query until the next change is submitted, so the several
        FUSE requests of one `ls` (lookup, getattr, opendir) search once.
        """
        parsed = self._parse(text)
        with self._cond:
            cached = self._results.get(text)
            if cached is not None and cached.generation == self._submitted:
                return cached.names
            submitted = self._submitted
        structured = facetquery.plan(parsed, SCHEMA) if self._facets is not None else None
        if structured is not None:
            assert self._facets is not None
            with self._facets.reading() as txn:
                names = facetquery.answer(txn, structured, self._limit)
            self._remember(text, submitted, names)
            return names
        if not self.kept:
            raise Disabled(f"{text!r} needs the text index, which is off ({self._off_key})")
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
                # Whoosh's Not matcher also yields deleted documents (a removed circuit,
                # a replaced version's old document): each is dropped here.
                names = sorted(column[d] for d in self._searcher.docs_for_query(parsed)
                               if not reader.is_deleted(d))
            names = names[: self._limit]
        self._remember(text, generation, names)
        return names

    def _remember(self, text: str, generation: int, names: list[str]) -> None:
        with self._cond:
            if len(self._results) >= 256:
                self._results.clear()
            self._results[text] = _Results(generation, names)

    def cached_hit(self, text: str, name: str) -> bool | None:
        """Whether `name` is among the results of `text` cached since the last change, or
        None when there are none (then search()). `ls -l` of a query directory looks up
        and reads the link of every hit: each is then a set lookup, not a search."""
        with self._cond:
            cached = self._results.get(text)
            if cached is None or cached.generation != self._submitted:
                return None
            if cached.members is None:
                cached.members = frozenset(cached.names)
            return name in cached.members

    def validate(self, text: str) -> None:
        """Refuse a malformed query without running it, and any query when both indexes
        are off."""
        if not self.kept and self._facets is None:
            raise Disabled(f"search is off ({self._off_key})")
        self._parse(text)

    def _parse(self, text: str) -> query.Query:
        """Parse once per query string: an `ls` validates at lookup, then searches at
        opendir, and Whoosh's parse costs more than the search of a name."""
        parsed = self._parsed.get(text)
        if parsed is None:
            parsed = self._parse_anew(text)
            if len(self._parsed) >= 256:
                self._parsed.clear()
            self._parsed[text] = parsed
        return parsed

    def _parse_anew(self, text: str) -> query.Query:
        """Whoosh repairs malformed queries silently; refuse them instead, saying why."""
        for opening, closing in ("[]", "()", "{}"):
            if text.count(opening) != text.count(closing):
                raise _bad(text, f"unbalanced {opening}{closing}")
        if text.count('"') % 2:
            raise _bad(text, "unbalanced quotes")
        for field in _FIELD_PREFIX.findall(text):
            if field not in KNOWN_FIELDS:
                raise _bad(text, f"unknown field {field!r} "
                                 f"(known: {', '.join(sorted(KNOWN_FIELDS))})")
        _check_operators(text)
        try:
            tree = self._parser.process(text)
            _check_syntax(text, tree)
            parsed = tree.query(self._parser) or query.NullQuery
        except Invalid:
            raise
        except Exception as exc:
            raise _bad(text, str(exc)) from exc
        return _runnable(text, parsed)

    def wait_committed(self, timeout: float = 30.0) -> None:
        """Wait until every change submitted so far is searchable; while the writer fails,
        wait for one retry only and refuse with its reason."""
        with self._cond:
            target, failed = self._submitted, self._failed
            self._flush_now = self._retry_now = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: (self._ready and self._committed >= target) or self._closing
                or self._failed > failed, timeout)
            ready, behind, error = self._ready, target - self._committed, self._error
        if ready and behind <= 0:
            return
        why = f" (writing it fails: {error}; retrying)" if error else "; try again shortly"
        if not ready:
            raise Busy(f"the search index is still being built{why}")
        raise Busy(f"the search index is {behind} changes behind{why}")

    def rebuild_now(self, documents: Documents, timeout: float = 600.0) -> None:
        """Rebuild the index from `documents` in the writer thread and wait for it."""
        if not self.kept:
            return
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
            self._writer_pool.shutdown()
        with self._search_lock:
            if self._searcher is not None:
                self._searcher.close()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self, documents: Documents, expected: int, force: bool) -> None:
        while not self._attempt("opening", self._open, documents, expected, force):
            if self._closing:
                return
            self._backoff()
        with self._cond:
            self._ready = True
            self._cond.notify_all()
        while True:
            with self._cond:
                woke = self._cond.wait_for(
                    lambda: self._pending or self._closing or self._rebuild_with is not None,
                    MERGE_WHEN_IDLE if self._unmerged else None)
                rebuild = self._rebuild_with
            if not woke:
                if not self._attempt("merging", self._merge):  # idle: merging costs no wait
                    self._backoff()
                continue
            if rebuild is not None:
                if self._attempt("rebuilding", self._rebuild, rebuild):
                    with self._cond:
                        self._commits += 1
                        self._results.clear()
                        self._rebuild_with = None
                        self._cond.notify_all()
                elif not self._closing:
                    self._backoff()
                continue
            with self._cond:
                if not self._closing and not self._flush_now:
                    self._cond.wait_for(lambda: self._flush_now or self._closing, self._interval)
                batch, self._pending = self._pending, {}
                generation = self._submitted
                self._flush_now = False
                closing = self._closing
            if batch and not self._attempt("writing", self._commit, batch):
                with self._cond:  # kept for the retry; a newer change of a name wins
                    self._pending = {**batch, **self._pending}
                if closing:
                    self._abandon()
                    return
                self._backoff()
                continue
            with self._cond:
                self._commits += 1 if batch else 0
                self._committed = generation
                self._cond.notify_all()
            if closing and not self._pending:
                return

    def _attempt(self, what: str, step: Callable[..., None], *args) -> bool:
        """Run one step of the writer; a failure is logged once per run of failures (not
        per retry) and shown to searches, which refuse with EBUSY until a retry succeeds."""
        try:
            step(*args)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, QfsError) else f"{type(exc).__name__}: {exc}"
            with self._cond:
                first = self._error is None
                self._error = f"{what} failed: {reason}"
                self._failed += 1
                self._streak += 1
                self._cond.notify_all()
            if first:
                log.warning("search index: %s; retrying until it succeeds", self._error,
                            exc_info=not isinstance(exc, (QfsError, OSError)))
            return False
        if self._streak:
            log.warning("search index: writing succeeds again after %d failed attempts",
                        self._streak)
            with self._cond:
                self._error, self._streak = None, 0
        return True

    def _backoff(self) -> None:
        """Wait before retrying, doubling up to RETRY_MAX; a waiting search cuts it short."""
        delay = min(RETRY_FIRST * 2 ** (self._streak - 1), RETRY_MAX)
        with self._cond:
            self._cond.wait_for(lambda: self._retry_now or self._closing, delay)
            self._retry_now = False

    def _abandon(self) -> None:
        """Closing with changes the index cannot take: remove it, so that the next mount
        rebuilds it from LMDB instead of serving a stale index."""
        log.warning("search index: %d changes could not be indexed before closing; removing "
                    "the index so that the next mount rebuilds it", len(self._pending))
        shutil.rmtree(self._path, ignore_errors=True)

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
            # Whether the commit landed is unknown: its retry updates rather than adds.
            self._indexed.update(name for name, doc in batch.items() if doc is not None)
            raise
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
            # Indexing is background work: it yields the CPU to requests (a cp's parses).
            self._writer_pool = WorkerPool(1, Limits(memory_mb=2048, cpu_seconds=600,
                                                     wall_seconds=1200, niceness=10),
                                           preload=("whoosh",))
        try:
            self._writer_pool.run(function, *args)
        except WorkerDied as exc:
            log.warning("the index writer process died (%s); writing in this process from now "
                        "on", exc)
            self._writer_pool.shutdown()
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


@contextlib.contextmanager
def _disk_failures_refused() -> Iterator[None]:
    """A failing disk is no bug in the writer: its reason crosses back as a refusal."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise (NoSpace if full else Busy)(str(exc)) from None


@contextlib.contextmanager
def _cancelled_on_failure(writer) -> Iterator[None]:
    """Cancel a failed write. Cancelling writes too; when it fails as well (a full disk) the
    lock must still go, or every later writer of this long-lived process meets LockError."""
    try:
        yield
    except BaseException:
        try:
            writer.cancel()
        except Exception:
            writer.writelock.release()
        raise


def _apply_in_child(path: str, operations: list[tuple[str, Any]], merge: bool) -> None:
    with _disk_failures_refused():
        writer = index.open_dir(path).writer()
        with _cancelled_on_failure(writer):
            for kind, value in operations:
                if kind == "delete":
                    writer.delete_by_term("name", value)
                elif kind == "update":
                    writer.update_document(**value)
                else:
                    writer.add_document(**value)
            writer.commit(merge=merge)


def _merge_in_child(path: str) -> None:
    with _disk_failures_refused():
        writer = index.open_dir(path).writer()
        with _cancelled_on_failure(writer):
            writer.commit(merge=True)


def _rebuild_in_child(path: str, prepared: list[Document]) -> None:
    with _disk_failures_refused():
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)  # rmtree leaves a mount point in place
        writer = index.create_in(path, SCHEMA).writer(limitmb=256)
        with _cancelled_on_failure(writer):
            for document in prepared:
                writer.add_document(**document)
            writer.commit()
