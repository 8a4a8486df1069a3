"""The metadata store seam: a transactional key-value store with named tables.

LMDB here (`LmdbMetaStore`), PostgreSQL for many hosts (levels/store/pg.py), behind the one
`MetaStore` protocol the levels use. Each change the fabric makes is one write transaction,
so a crash never leaves half a version.

Durability follows POSIX: a committed transaction is in the operating system at once (it
survives a kill -9 of the daemon), and on disk after fsync() or within about a second (the
fabric syncs in the background), not after every commit, which would cost a disk flush per
close() and hold up every other request meanwhile.

The tables (`TABLES`): keys are UTF-8 names unless said otherwise, values JSON unless said
otherwise; each table is written by one level only.

    circuits     circuit name -> the circuit: id, times, meta.json, versions with their
                 stats                                     Level 3, levels/circuits.py
    names        circuit name -> mtime_ns, 8 bytes little-endian (a listing parses no
                 JSON)                                     Level 3, levels/circuits.py
    sources      circuit id + "/" + version, 8 bytes big-endian -> the program as written
                                                           Level 3, levels/circuits.py
    results      circuit id + "/" + run name -> the run's result document
                                                           Level 3, levels/circuits.py
    tasks        task name -> the allocation: device, qubits, buffers, owner, triggers
                                                           Level 1, levels/qubits.py
    checkpoints  checkpoint name -> meta.json's fields, the blob key, created_ns and
                 expires_ns                                Level 2, levels/states.py
    workflows    workflow name -> definition, status and per-stage results
                                                           Coordinator, levels/coordinator.py
    log          b"*" + sequence number (global ring) or b"s" + subject + b"\0" + sequence
                 number (a circuit's errors), 8 bytes big-endian -> one line
                                                           levels/oplog.py
    settings     setting name -> bytes: key_canary, a payload sealed with the state key
                                                           levels/store/canary.py
    facets       the structured search index: postings, counts and each circuit's indexed
                 terms under ordered byte keys (read by range scans)
                                                           Level 3, levels/facets.py

Circuit ids are random (uuid4 hex), so a rename moves only the `circuits` and `names` rows.
"""

import bisect
import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import lmdb

from levels.errors import NoSpace

FULL_BELOW = 8 << 20  # free bytes under which a failed commit is taken for a full disk
TABLES = ("circuits", "sources", "results", "names", "tasks", "checkpoints", "workflows", "log",
          "settings", "facets")


class Txn(Protocol):
    def get(self, table: str, key: bytes) -> bytes | None: ...
    def put(self, table: str, key: bytes, value: bytes) -> None: ...
    def delete(self, table: str, key: bytes) -> None: ...
    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...
    def keys(self, table: str, start: bytes, stop: bytes, limit: int) -> list[bytes]:
        """Up to `limit` keys k with start <= k < stop, in key order (a range scan)."""
        ...
    def get_many(self, table: str, keys: list[bytes]) -> list[bytes | None]:
        """The value of each key (None where absent), in the order asked."""
        ...
    def snapshot(self) -> int | None:
        """An id two transactions share only when they see the same data (what a reader
        may key a cache of derived data by), or None where the store keeps none."""
        ...


class MetaStore(Protocol):
    def reading(self) -> contextlib.AbstractContextManager[Txn]: ...
    def writing(self) -> contextlib.AbstractContextManager[Txn]: ...
    def sync(self) -> None: ...
    def usage(self) -> tuple[int, int]: ...
    def close(self) -> None: ...


class _LmdbTxn:
    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
        self._txn: Any = txn  # buffers=False: keys and values are bytes
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[table])

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[table])

    def delete(self, table: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[table])

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(db=self._dbs[table])
        if not cursor.set_range(prefix):
            return iter(())
        if not prefix:  # the whole table: the cursor's own iteration, no check per key
            return iter(cursor)
        return itertools.takewhile(lambda row: row[0].startswith(prefix), cursor)

    def keys(self, table: str, start: bytes, stop: bytes, limit: int) -> list[bytes]:
        """Read in growing batches (list and islice run in C, the stop is found by bisection)
        so that at most about as many keys are read past `stop` as before it."""
        cursor = self._txn.cursor(db=self._dbs[table])
        if not cursor.set_range(start):
            return []
        found = cursor.iternext(values=False)
        out: list[bytes] = []
        batch = 64
        while len(out) < limit:
            got = list(itertools.islice(found, min(batch, limit - len(out))))
            if got and got[-1] >= stop:
                out += got[:bisect.bisect_left(got, stop)]
                break
            out += got
            if len(got) < batch:
                break
            batch *= 2
        return out

    def get_many(self, table: str, keys: list[bytes]) -> list[bytes | None]:
        get, db = self._txn.get, self._dbs[table]
        return [get(key, db=db) for key in keys]

    def snapshot(self) -> int | None:
        return self._txn.id()  # a read transaction's: the last commit it sees


class _Reading:
    """A read transaction for a with-block. A class, not a generator: a stat through the
    mount makes several of these, and a generator-based one costs more than the reads."""

    __slots__ = ("_dbs", "_env", "_txn")

    def __init__(self, env: lmdb.Environment, dbs: dict[str, Any]) -> None:
        self._env, self._dbs = env, dbs

    def __enter__(self) -> Txn:
        self._txn = self._env.begin(buffers=False)
        return _LmdbTxn(self._txn, self._dbs)

    def __exit__(self, *exc_info: object) -> None:
        self._txn.abort()  # read-only: nothing to commit


class LmdbMetaStore:
    """One LMDB environment holding every table; a commit reaches the operating system at
    once and the disk when `sync` is called (see the module's durability note)."""

    def __init__(self, path: Path, map_size_mb: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._env = lmdb.open(
            str(path), map_size=map_size_mb << 20, max_dbs=len(TABLES) + 4, subdir=True,
            sync=False,
        )
        self._dbs = {name: self._env.open_db(name.encode()) for name in TABLES}

    def reading(self) -> contextlib.AbstractContextManager[Txn]:
        return _Reading(self._env, self._dbs)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Txn]:
        try:
            with self._env.begin(write=True) as txn:
                yield _LmdbTxn(txn, self._dbs)
        except lmdb.MapFullError as exc:
            raise NoSpace("the LMDB map is full (raise circuit_fs.lmdb_map_size_mb)") from exc
        except lmdb.DiskError as exc:
            raise NoSpace(f"the data directory is full: {exc}") from exc
        except lmdb.Error as exc:
            # A commit that hits ENOSPC surfaces as EIO from mdb_txn_commit: tell them apart
            # by the free space left.
            free = os.statvfs(self._path)
            if free.f_bavail * free.f_frsize < FULL_BELOW:
                raise NoSpace(f"the data directory is full ({exc})") from exc
            raise

    def sync(self) -> None:
        """Flush committed transactions to disk (fsync)."""
        self._env.sync(True)

    def usage(self) -> tuple[int, int]:
        """(bytes of the map in use, map size)."""
        info, stat = self._env.info(), self._env.stat()
        return (info["last_pgno"] + 1) * stat["psize"], info["map_size"]

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()
