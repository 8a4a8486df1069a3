"""The metadata store on PostgreSQL: the `MetaStore` protocol, shared by many hosts.

Each logical table of levels/store/meta.py is a PostgreSQL table `qfs_<name>` (key bytea
PRIMARY KEY, value bytea): prefix scans are key ranges, in the byte order LMDB uses.

Every change is one transaction, as with LMDB, and as with LMDB there is one writer at a
time: a write transaction first takes the row lock of `qfs_writer` (SELECT ... FOR
UPDATE), so the read-modify-write a level does inside it (the next version number, a
free name, the qubits no task holds) sees every earlier commit of every host and no
other host commits in between. Keys are primary keys, so a row is never doubled. Read
transactions are REPEATABLE READ snapshots and take no lock.

Every row a commit changes is appended to `qfs_changes` by a trigger, with the host
(`application_name`) that made it, and announced by NOTIFY qfs_changes: the change feed
(levels/store/feed.py) of each other host follows it to drop stale caches.

The schema is created and migrated on first use under an advisory lock; `qfs_schema`
holds its version.
"""

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from levels.errors import Unavailable, first_line
from levels.store.meta import TABLES

SCHEMA_VERSION = 1
_LOCK_ID = 0x7166730001  # pg_advisory_lock id held while the schema is created
CHANNEL = "qfs_changes"


def _ddl() -> list[str]:
    tables = [f"CREATE TABLE IF NOT EXISTS qfs_{name} (key bytea PRIMARY KEY, "
              f"value bytea NOT NULL)" for name in TABLES]
    triggers = [
        f"CREATE OR REPLACE TRIGGER qfs_{name}_changes AFTER INSERT OR UPDATE OR DELETE ON "
        f"qfs_{name} FOR EACH ROW EXECUTE FUNCTION qfs_note_change('{name}')"
        for name in TABLES
    ]
    return [
        "CREATE TABLE IF NOT EXISTS qfs_writer (id int PRIMARY KEY CHECK (id = 1))",
        "INSERT INTO qfs_writer VALUES (1) ON CONFLICT DO NOTHING",
        "CREATE TABLE IF NOT EXISTS qfs_changes (seq bigserial PRIMARY KEY, "
        "tbl text NOT NULL, key bytea NOT NULL, host text NOT NULL, "
        "at timestamptz NOT NULL DEFAULT now())",
        """CREATE OR REPLACE FUNCTION qfs_note_change() RETURNS trigger AS $$
        BEGIN
            INSERT INTO qfs_changes (tbl, key, host) VALUES (TG_ARGV[0],
                CASE WHEN TG_OP = 'DELETE' THEN OLD.key ELSE NEW.key END,
                current_setting('application_name'));
            PERFORM pg_notify('qfs_changes', '');
            RETURN NULL;
        END $$ LANGUAGE plpgsql""",
        *tables,
        *triggers,
    ]


def _successor(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with `prefix` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def host_name(data_dir: Path) -> str:
    """This mount's name: its machine and data directory (two mounts on one machine are
    two hosts), the same after a remount, short enough for an application_name."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()[:40]}-{digest}"


class _PgTxn:
    def __init__(self, cursor: Any) -> None:
        self._cur = cursor

    def get(self, table: str, key: bytes) -> bytes | None:
        self._cur.execute(f"SELECT value FROM qfs_{_checked(table)} WHERE key = %s", (key,))
        row = self._cur.fetchone()
        return None if row is None else bytes(row[0])

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._cur.execute(
            f"INSERT INTO qfs_{_checked(table)} (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value))

    def delete(self, table: str, key: bytes) -> None:
        self._cur.execute(f"DELETE FROM qfs_{_checked(table)} WHERE key = %s", (key,))

    def scan(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        query = f"SELECT key, value FROM qfs_{_checked(table)}"
        high = _successor(prefix)
        if prefix and high is not None:
            self._cur.execute(query + " WHERE key >= %s AND key < %s ORDER BY key",
                              (prefix, high))
        elif prefix:
            self._cur.execute(query + " WHERE key >= %s ORDER BY key", (prefix,))
        else:
            self._cur.execute(query + " ORDER BY key")
        # Fetched whole: callers write to the same transaction while they iterate.
        rows = self._cur.fetchall()
        for key, value in rows:
            yield bytes(key), bytes(value)


    def keys(self, table: str, start: bytes, stop: bytes, limit: int) -> list[bytes]:
        self._cur.execute(f"SELECT key FROM qfs_{_checked(table)} WHERE key >= %s AND "
                          "key < %s ORDER BY key LIMIT %s", (start, stop, limit))
        return [bytes(row[0]) for row in self._cur.fetchall()]

    def get_many(self, table: str, keys: list[bytes]) -> list[bytes | None]:
        self._cur.execute(f"SELECT key, value FROM qfs_{_checked(table)} WHERE key = ANY(%s)",
                          (keys,))
        found = {bytes(k): bytes(v) for k, v in self._cur.fetchall()}
        return [found.get(key) for key in keys]

    def snapshot(self) -> int | None:
        return None  # other hosts commit without telling this one: nothing to key a cache by


def _checked(table: str) -> str:
    if table not in TABLES:
        raise KeyError(f"no metadata table {table}")
    return table


class PostgresMetaStore:
    """A connection pool over one database; the schema is made ready on open.

    An unreachable server raises Unavailable ("metadata store unreachable") from the
    request that needed it. Once the server is found gone, requests fail at once (each
    tries one direct connection, at most every PROBE seconds, instead of waiting out the
    pool) and the first that finds it back opens a fresh pool: no remount is needed."""

    PROBE = 0.5

    def __init__(self, dsn: str, host: str, max_connections: int = 8) -> None:
        import psycopg
        from psycopg_pool import PoolTimeout

        self._psycopg = psycopg
        self._lost = (psycopg.OperationalError, PoolTimeout)  # server down or unreachable
        self.dsn = dsn
        self.host = host
        self._max = max_connections
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._probed = 0.0
        try:  # one direct connection first: a refusal is then reported at once
            psycopg.connect(dsn, connect_timeout=3).close()
            self._pool = self._open_pool()
        except Exception as exc:
            raise self._unavailable(exc) from None
        with self._connection() as conn:
            _migrate(conn)

    def _open_pool(self) -> Any:
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(
            self.dsn, min_size=1, max_size=self._max, open=False, timeout=5,
            kwargs={"autocommit": True, "application_name": self.host, "connect_timeout": 3})
        try:
            pool.open(wait=True, timeout=5)
        except BaseException:
            pool.close()
            raise
        return pool

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"metadata store unreachable: PostgreSQL at {_safe(self.dsn)}: "
                           f"{first_line(exc)}")

    def _check_back(self) -> None:
        """While the server is known gone: raise at once, or reopen the pool if it is back."""
        with self._lock:
            if self._down_since is None:
                return
            now = time.monotonic()
            if now - self._probed < self.PROBE:
                raise Unavailable(f"metadata store unreachable: PostgreSQL at "
                                  f"{_safe(self.dsn)} (down since "
                                  f"{now - self._down_since:.1f} s)")
            self._probed = now
            try:
                self._psycopg.connect(self.dsn, connect_timeout=2).close()
                fresh = self._open_pool()
            except Exception as exc:
                raise self._unavailable(exc) from None
            old, self._pool, self._down_since = self._pool, fresh, None
        old.close(timeout=0)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        self._check_back()
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._lost as exc:
            with self._lock:
                if self._down_since is None:
                    self._down_since = self._probed = time.monotonic()
            raise self._unavailable(exc) from exc

    @contextlib.contextmanager
    def reading(self) -> Iterator[_PgTxn]:
        with self._connection() as conn, conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield _PgTxn(cur)
            finally:
                cur.execute("COMMIT")

    @contextlib.contextmanager
    def writing(self) -> Iterator[_PgTxn]:
        with self._connection() as conn, conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                cur.execute("SELECT id FROM qfs_writer WHERE id = 1 FOR UPDATE")
                yield _PgTxn(cur)
            except BaseException:
                with contextlib.suppress(Exception):  # a lost connection is rolled back
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def last_change(self) -> int:
        """The sequence number of the newest change (where a change feed starts)."""
        with self._connection() as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM qfs_changes").fetchone()
            return int(row[0])

    def oldest_change(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT coalesce(min(seq), 0) FROM qfs_changes").fetchone()
            return int(row[0])

    def changes_after(self, seq: int, limit: int = 10_000) -> list[tuple[int, str, bytes, str]]:
        """(seq, table, key, host) of the changes after `seq`, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT seq, tbl, key, host FROM qfs_changes WHERE seq > %s ORDER BY seq "
                "LIMIT %s", (seq, limit)).fetchall()
        return [(int(s), t, bytes(k), h) for s, t, k, h in rows]

    def trim_changes(self, keep_seconds: int = 3600) -> None:
        """Drop changes every host has had time to see (a host further behind rebuilds)."""
        with self._connection() as conn:
            conn.execute("DELETE FROM qfs_changes WHERE at < now() - make_interval(secs => %s)",
                         (keep_seconds,))

    def sync(self) -> None:
        """Nothing to do: a commit is durable in PostgreSQL when it returns."""

    def usage(self) -> tuple[int, int]:
        """(bytes the database holds, 0: PostgreSQL has no fixed map to fill)."""
        with self._connection() as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]), 0

    def close(self) -> None:
        self._pool.close()


def _migrate(conn: Any) -> None:
    """Create or upgrade the schema once, whichever host gets there first."""
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS qfs_schema (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM qfs_schema").fetchone()
        current = row[0] or 0
        if current > SCHEMA_VERSION:
            raise Unavailable(f"the metadata database has schema version {current}, newer "
                              f"than this qfs ({SCHEMA_VERSION}): upgrade qfs")
        with conn.transaction():
            for statement in _ddl():  # idempotent: also adds a table TABLES gained
                conn.execute(statement)
            if current < SCHEMA_VERSION:
                conn.execute("INSERT INTO qfs_schema VALUES (%s)", (SCHEMA_VERSION,))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))


def _safe(dsn: str) -> str:
    """The DSN without a password, for messages."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "the configured DSN"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
