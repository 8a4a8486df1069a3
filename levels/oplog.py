"""Recent refusals with their reasons, readable in /.qfs/log and per circuit in `errors`.

A failed write() can only return an errno; the reason goes here and to the Python log,
so that `cat /.qfs/log` answers "why was my write refused?". Paths and reasons come from
users: their control characters are escaped, so that no request can forge a log line.
"""

import collections
import logging
import struct
import time

from levels.errors import Unavailable
from levels.lru import LRU
from levels.store.meta import MetaStore

log = logging.getLogger("qfs")
MAX_REPLIES = 4096  # control files whose last reply is kept to be read back
_SEQ = struct.Struct(">Q")  # big-endian, so that a table scan returns lines in order


def escape_controls(text: str) -> str:
    """`text` with every unprintable character (newline, carriage return, escape sequences,
    Unicode line separators and direction overrides) written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _clipped(reason: str, limit: int = 1000) -> str:
    """A reason cut to `limit` characters: a refusal may quote what was written, and the
    log's rings bound lines, not bytes."""
    if len(reason) <= limit:
        return reason
    return f"{reason[:limit]}... ({len(reason) - limit} more characters)"


class EscapingFormatter(logging.Formatter):
    """One record, one line of qfs.log: the message's control characters are escaped, and
    the lines of a traceback are indented under their record, so none looks like a record
    of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


# A ring of (sequence number, line), oldest first.
Ring = collections.deque[tuple[int, str]]
_ALL = b"*"  # key prefix of the global ring in the store's `log` table


def _subject_prefix(subject: str) -> bytes:
    return b"s" + subject.encode() + b"\0"


class OpLog:
    """Bounded rings of refusal lines, globally and per subject (e.g. a circuit name).

    With a metadata store they are kept in its `log` table, one small transaction per line,
    so that `/.qfs/log` and a circuit's `errors` read the same after a remount."""

    def __init__(self, meta: MetaStore | None = None, capacity: int = 1000,
                 per_subject: int = 20, subjects: int = 10000) -> None:
        self._meta = meta
        self._capacity = capacity
        self._per_subject = per_subject
        self._subjects = subjects  # rings kept, the least recently written go first
        self._lines: Ring = collections.deque()
        self._by_subject: collections.OrderedDict[str, Ring] = collections.OrderedDict()
        # The last reply of each control file, the least recently written forgotten past
        # MAX_REPLIES (a task's ctl stays a key after its task is released).
        self._replies: LRU[str] = LRU(MAX_REPLIES)
        self._next = 0
        if meta is not None:
            self._load(meta)

    def refuse(self, where: str, reason: str, subject: str | None = None) -> None:
        where, reason = escape_controls(where), escape_controls(_clipped(reason))
        log.warning("refused %s: %s", where, reason)
        self._add(f"{where}: {reason}", subject)

    def note(self, where: str, what: str) -> None:
        """A line for something users should hear of that is no refusal (a dropped version)."""
        where, what = escape_controls(where), escape_controls(what)
        log.info("%s: %s", where, what)
        self._add(f"{where}: {what}", None)

    def _add(self, text: str, subject: str | None) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {text}"
        seq, self._next = self._next, self._next + 1
        changes: list[tuple[bytes, bytes | None]] = []
        self._push(self._lines, self._capacity, _ALL, seq, line, changes)
        if subject is not None:
            ring = self._by_subject.setdefault(subject, collections.deque())
            self._by_subject.move_to_end(subject)
            self._push(ring, self._per_subject, _subject_prefix(subject), seq, line, changes)
            if len(self._by_subject) > self._subjects:
                self.forget_subject(next(iter(self._by_subject)))
        self._store(changes)

    @staticmethod
    def _push(ring: Ring, capacity: int, prefix: bytes, seq: int, line: str,
              changes: list[tuple[bytes, bytes | None]]) -> None:
        ring.append((seq, line))
        changes.append((prefix + _SEQ.pack(seq), line.encode()))
        while len(ring) > capacity:
            changes.append((prefix + _SEQ.pack(ring.popleft()[0]), None))

    def _store(self, changes: list[tuple[bytes, bytes | None]]) -> None:
        """Keep the change; a store that fails (a full disk) costs the line its persistence,
        never the request that is being refused."""
        if self._meta is None or not changes:
            return
        try:
            with self._meta.writing() as txn:
                for key, value in changes:
                    if value is None:
                        txn.delete("log", key)
                    else:
                        txn.put("log", key, value)
        except Unavailable as exc:  # a shared store is down: the line stays in memory
            log.warning("could not keep a line of /.qfs/log: %s", exc)
        except Exception:
            log.exception("could not keep a line of /.qfs/log in the metadata store")

    def _load(self, meta: MetaStore) -> None:
        with meta.reading() as txn:
            for key, value in txn.scan("log"):
                seq = _SEQ.unpack(key[-_SEQ.size:])[0]
                self._next = max(self._next, seq + 1)
                if key.startswith(_ALL):
                    self._lines.append((seq, value.decode()))
                else:
                    subject = key[1:-_SEQ.size - 1].decode()
                    self._by_subject.setdefault(subject, collections.deque()).append(
                        (seq, value.decode()))

    def text(self) -> str:
        return "".join(line + "\n" for _seq, line in self._lines)

    def subject_text(self, subject: str) -> str:
        return "".join(line + "\n" for _seq, line in self._by_subject.get(subject, ()))

    def forget_subject(self, subject: str) -> None:
        ring = self._by_subject.pop(subject, ())
        self._store([(_subject_prefix(subject) + _SEQ.pack(seq), None) for seq, _ in ring])

    def rename_subject(self, old: str, new: str) -> None:
        ring = self._by_subject.pop(old, None)
        if ring is None:
            return
        self.forget_subject(new)
        self._by_subject[new] = ring
        old_prefix, new_prefix = _subject_prefix(old), _subject_prefix(new)
        self._store([change for seq, line in ring for change in (
            (old_prefix + _SEQ.pack(seq), None), (new_prefix + _SEQ.pack(seq), line.encode()))])

    def set_reply(self, control: str, text: str) -> None:
        """The answer to the last command written to a control file, read back from it."""
        self._replies.put(control, text if text.endswith("\n") else text + "\n")

    def reply(self, control: str) -> str:
        return self._replies.peek(control) or ""
