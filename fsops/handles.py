"""Open files and directories.

A write to a fabric file is buffered in its handle and committed at flush/fsync (so close()
returns the verdict: EINVAL for a circuit Qiskit refuses) or, failing that, at release;
an entry may instead take the writes as they come through a stream once it has judged the
first bytes (an imported state vector, sealed chunk by chunk).
Writers never share a buffer, so concurrent `cp`s onto one latest.qasm each become a whole
version. Scratch files are written in place. Readers hold what open() gave them (a snapshot
or a range reader), so a circuit deleted under an open reader does not break it.
"""

import contextlib
import dataclasses
from collections.abc import Iterator

import trio

from levels.errors import Corrupt, QfsError
from levels.vfs import Entry, RangeReader
from levels.vfs.entry import Listing, WriteStream, resize

Path = tuple[str, ...]


@dataclasses.dataclass
class FileHandle:
    ino: int
    entry: Entry  # what the file is: its commit(), control() and screen()
    data: bytearray | bytes
    writable: bool
    uid: int = 0  # who opened it (commands are checked against the task's owner)
    reader: RangeReader | None = None  # content read in pieces instead of `data`
    dirty: bool = False
    written: bool = False  # any write() or ftruncate() yet (O_TRUNC alone is not content)
    screening: bool = True  # the entry judges the first bytes until satisfied
    reserved: int = 0  # bytes held against the writer's budget (levels/budget.py)
    refused: QfsError | None = None  # a write() or truncate() refused: nothing commits,
    # and close() says why
    unsettled: bool = False  # written since the last close: the kernel's size is the writer's
    stream: WriteStream | None = None  # takes the writes instead of `data`, once screened

    @property
    def size(self) -> int:
        """The bytes written (what stat shows the writer)."""
        return self.stream.size if self.stream is not None else len(self.data)

    @property
    def path(self) -> Path:
        return self.entry.path

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if self.reader is not None:
            return await self.reader.read(offset, size)
        return bytes(self.data[offset : offset + size])

    async def write(self, offset: int, buf: bytes) -> int:
        if self.stream is not None:
            stream = self._open_stream()
            with self._failure_sticks():
                await stream.write(offset, buf)
            self.dirty = self.written = self.unsettled = True
            return len(buf)
        data = self.data
        assert isinstance(data, bytearray)
        if offset > len(data):
            data.extend(bytes(offset - len(data)))
        data[offset : offset + len(buf)] = buf
        self.dirty = self.written = self.unsettled = True
        if self.entry.scratch is not None:
            self.entry.scratch.touch()
        if self.screening and self.entry.screen(data):
            self.screening = False
            with self._failure_sticks():
                self.stream = self.entry.stream(data, self.uid)
            if self.stream is not None:
                self.data = bytearray()
        return len(buf)

    async def truncate(self, size: int, at_open: bool = False) -> None:
        """ftruncate(), content as a write is (the next close commits it: `truncate -s`
        hears a refusal), or O_TRUNC `at_open`, which is not yet content (see
        commit_if_dirty)."""
        if self.stream is not None:
            stream = self._open_stream()
            with self._failure_sticks():
                await stream.truncate(size)
        else:
            assert isinstance(self.data, bytearray)
            resize(self.data, size)
        self.dirty = self.unsettled = True
        self.written = self.written or not at_open
        if self.entry.scratch is not None:
            self.entry.scratch.touch()

    async def commit_if_dirty(self, closing: bool = False) -> None:
        """Send the buffer to the entry's commit once; a failed commit is not retried, and
        after a refused write() nothing is sent (the file holds what the writer did not
        mean): each close repeats that refusal, a failed commit's too (np.save hears only
        its last close: numpy writes through a duplicate whose close it ignores).

        Before any write() or ftruncate() only the last close commits: a shell redirection
        opens the file, dup2()s and closes the first descriptor (a flush) before the command
        writes."""
        if self.refused is not None:
            await self.discard()  # a refused stream's chunks go before close() returns
            raise self.refused
        if not self.dirty or not self.entry.commits or not (self.written or closing):
            return
        self.dirty = False
        with self._failure_sticks():
            if self.stream is not None:
                stream, self.stream = self.stream, None
                await stream.close()
            elif self.entry.takes_buffer:  # a 4 GiB import is not copied: the entry keeps it
                data, self.data = self.data, bytearray()
                await self.entry.commit(data, self.uid)  # type: ignore[arg-type]
            else:
                await self.entry.commit(bytes(self.data), self.uid)

    def _open_stream(self) -> WriteStream:
        """The stream, unless a refusal closed it to more bytes (close() says why)."""
        if self.refused is not None:
            raise self.refused
        assert self.stream is not None
        return self.stream

    @contextlib.contextmanager
    def _failure_sticks(self) -> Iterator[None]:
        """A failure of what a stream takes (a write, a truncate, its start) or of the
        commit stands for the handle: nothing commits, and each close says why (an
        unexpected error as EIO)."""
        try:
            yield
        except QfsError as exc:
            self.refused = exc
            raise
        except Exception as exc:
            self.refused = Corrupt(f"the write stopped on an internal error: {exc!r}")
            raise

    async def discard(self) -> None:
        """Drop what a stream took without committing it (off trio's thread: the abort
        waits for the chunks in flight)."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await trio.to_thread.run_sync(stream.abort)


def open_handle(ino: int, entry: Entry, content: bytes | RangeReader, writable: bool,
                uid: int) -> FileHandle:
    """A handle over a scratch file's own buffer, or over a private copy of `content`."""
    if entry.scratch is not None:
        return FileHandle(ino, entry, entry.scratch.data, writable, uid)
    if not isinstance(content, bytes):  # a RangeReader (a protocol check costs ~5 us)
        return FileHandle(ino, entry, b"", writable, uid, reader=content)
    data: bytearray | bytes = bytearray(content) if writable else content
    return FileHandle(ino, entry, data, writable, uid)


@dataclasses.dataclass
class DirHandle:
    """A directory listing snapshot: readdir offsets index it, stable while it is open."""

    path: Path
    entries: Listing | None  # None: listed at the first readdir
