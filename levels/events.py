"""Live events: what happens to a task or a workflow, as one JSON line per event, for every
reader of /qubits/tasks/<T>/events and /workflows/<W>/events.

Each open of an events file is an `EventReader` subscribed to its topic: it sees every
event published from then on, in order. A publisher never waits for a reader: each reader
holds at most `capacity` lines, and when a slow reader's buffer is full the oldest lines go
and the stream says so where they were (`{"event": "overflow", "dropped": N}`). A read
blocks until there is a line (trio, not a thread), and returns what fits; the file has no
end, so `cat` and `while read` loops follow it until interrupted. FUSE cannot cancel a read
the kernel already handed over (pyfuse3 takes no interrupts), so a blocked read also
watches the reading process: a signal pending for it (Ctrl-C) or its exit ends the read
with end of file at once, and the signal is delivered.

The hub keeps readers weakly: a reader whose file was closed goes with its handle.
"""

import collections
import json
import threading
import time
import weakref
from typing import Any

import trio

from levels.errors import Busy

READER_CAPACITY = 1024  # lines kept for one reader that is not reading
# A blocked read holds one of pyfuse3's request tasks (99 at most): bound the readers so
# that event streams can never take every task from the other requests.
MAX_READERS = 32
WATCH_SECONDS = 0.2  # how often a blocked read looks at its reading process


def task_topic(task: str) -> str:
    return f"task/{task}"


def workflow_topic(workflow: str) -> str:
    return f"workflow/{workflow}"


class EventReader:
    """One open of an events file: a bounded queue of lines, read as a stream. It is a
    RangeReader of size 0 (levels/vfs): the file is read with direct I/O until EOF."""

    size = 0

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lines: collections.deque[bytes] = collections.deque()
        self._dropped = 0
        self._lock = threading.Lock()
        self._wakeup = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._rest = b""  # what a short read left of a line
        self._pid = 0  # the reading process (0: not watched)

    def watch(self, pid: int) -> None:
        """The process that opened the file: a pending signal or its exit ends a read."""
        self._pid = pid

    def offer(self, line: bytes) -> None:
        """Queue one line (any thread; never blocks): the oldest goes when full."""
        with self._lock:
            if len(self._lines) >= self._capacity:
                self._lines.popleft()
                self._dropped += 1
            self._lines.append(line)
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # another thread: wake the reader from trio's
            self._token.run_sync_soon(self._wakeup.set)
        else:
            self._wakeup.set()

    def _take(self, size: int) -> bytes:
        with self._lock:
            parts = [self._rest]
            if self._dropped:
                parts.append(_line({"event": "overflow", "dropped": self._dropped,
                                    "reason": f"this reader fell {self._capacity} events "
                                              "behind; the oldest were dropped"}))
                self._dropped = 0
            while self._lines and sum(map(len, parts)) < size:
                parts.append(self._lines.popleft())
            if not self._lines:
                self._wakeup = trio.Event()
        data = b"".join(parts)
        self._rest = data[size:]
        return data[:size]

    async def read(self, offset: int, size: int) -> bytes:
        """The next lines (up to `size` bytes), waiting for one; b"" when the reader is
        interrupted or gone."""
        while True:
            data = self._take(size)
            if data:
                return data
            with trio.move_on_after(WATCH_SECONDS):
                await self._wakeup.wait()
            if self._pid and _interrupted(self._pid):
                return b""


def _interrupted(pid: int) -> bool:
    """Whether `pid` has exited or has a signal pending that it neither blocks nor ignores."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return True
    if fields.get("State", "").split()[:1] in (["Z"], ["X"]):
        return True
    pending = int(fields.get("SigPnd", "0"), 16) | int(fields.get("ShdPnd", "0"), 16)
    held = int(fields.get("SigBlk", "0"), 16) | int(fields.get("SigIgn", "0"), 16)
    return bool(pending & ~held)


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), default=str).encode() + b"\n"


class EventHub:
    """Topics to their readers; `publish` stamps an event and offers it to each."""

    def __init__(self, capacity: int = READER_CAPACITY) -> None:
        self._capacity = capacity
        self._readers: dict[str, weakref.WeakSet[EventReader]] = {}
        self._lock = threading.Lock()

    def subscribe(self, topic: str) -> EventReader:
        """A reader of every event published on `topic` from now on (call in trio); Busy
        when MAX_READERS are open."""
        reader = EventReader(self._capacity)
        with self._lock:
            if sum(len(readers) for readers in self._readers.values()) >= MAX_READERS:
                raise Busy(f"{MAX_READERS} event streams are open; close one first")
            self._readers.setdefault(topic, weakref.WeakSet()).add(reader)
        return reader

    def publish(self, topic: str, event: str, **fields: Any) -> None:
        with self._lock:
            readers = list(self._readers.get(topic, ()))
        if not readers:
            return
        line = _line({"event": event, "time": round(time.time(), 6), **fields})
        for reader in readers:
            reader.offer(line)
