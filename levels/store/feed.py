"""The change feed: what other hosts changed in the shared metadata store, as it happens.

A thread LISTENs on PostgreSQL's qfs_changes channel (levels/store/pg.py appends each
changed row to `qfs_changes` and notifies) and reads the table after the last sequence
number it delivered, so a lost notification or a dropped connection loses nothing: the
next wake-up (a notification, or `POLL` seconds) reads on from where it stopped. Changes
this host made are skipped (its own caches are right already). Every host trims changes
older than an hour (KEEP) now and then. When the table no longer holds the changes after
its position (trimmed while this host was away), it delivers `None`: the listeners then
treat everything as changed.

Listeners run on the feed's thread, one call per change: (table, key) or None.
"""

import logging
import threading
import time
from collections.abc import Callable

from levels.errors import first_line
from levels.store.pg import CHANNEL, PostgresMetaStore

log = logging.getLogger("qfs")
POLL = 0.5  # seconds between reads of the change table when no notification came
TRIM_EVERY = 600.0  # seconds between trims of changes older than KEEP
KEEP = 3600  # seconds a change stays in the table for hosts that were away
Listener = Callable[[tuple[str, bytes] | None], None]


class ChangeFeed:
    def __init__(self, store: PostgresMetaStore) -> None:
        self._store = store
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._position = store.last_change()
        self._next_trim = time.monotonic() + TRIM_EVERY
        self._thread = threading.Thread(target=self._follow, name="qfs-feed", daemon=True)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._store.dsn, autocommit=True,
                                     connect_timeout=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._deliver()  # what happened while (re)connecting
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=POLL, stop_after=1):
                            pass
                        self._deliver()
                        if time.monotonic() > self._next_trim:
                            self._store.trim_changes(KEEP)
                            self._next_trim = time.monotonic() + TRIM_EVERY
            except Exception as exc:  # the server is down: try again, losing nothing
                log.warning("change feed: %s; retrying", first_line(exc))
                self._stop.wait(1.0)

    def _deliver(self) -> None:
        while True:
            changes = self._store.changes_after(self._position)
            if not changes:
                return
            first = changes[0][0]
            if first > self._position + 1 and self._store.oldest_change() == first:
                # What came between may have been trimmed (or was a rolled-back number):
                # tell the listeners to start afresh, which is right either way.
                self._tell(None)
            for seq, table, key, host in changes:
                self._position = seq
                if host != self._store.host:
                    self._tell((table, key))

    def _tell(self, change: tuple[str, bytes] | None) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                log.exception("change feed listener failed on %r", change)
