"""Open files and directories.

A write to a fabric file is buffered in its handle and committed at flush/fsync (so close()
returns the verdict: EINVAL for a circuit Qiskit refuses) or, failing that, at release.
Writers never share a buffer, so concurrent `cp`s onto one latest.qasm each become a whole
version. Scratch files are written in place. Readers hold a snapshot taken at open, so a
circuit deleted under an open reader does not break it.
"""

import dataclasses

from fsops.nodes import Commit, Control, Node, Screen
from levels.errors import QfsError
from levels.scratch import ScratchFile

Path = tuple[str, ...]


def resize(data: bytearray, size: int) -> None:
    """Cut or zero-extend a buffer in place, as truncate(2) does to a file."""
    if size < len(data):
        del data[size:]
    else:
        data.extend(bytes(size - len(data)))


@dataclasses.dataclass
class FileHandle:
    ino: int
    path: Path
    data: bytearray | bytes
    writable: bool
    commit: Commit | None = None
    scratch: ScratchFile | None = None
    subject: str | None = None
    dirty: bool = False
    written: bool = False  # any write() yet (a truncate alone is not yet content)
    imports: bool = False  # a /circuits/<name>.qasm import: the scratch goes at release
    control: Control | None = None  # a control file: each write() runs one command
    uid: int = 0  # who opened it (commands are checked against the task's owner)
    screen: Screen | None = None  # judges the first bytes; None once they passed
    reserved: int = 0  # bytes held against the writer's budget (levels/budget.py)
    refused: QfsError | None = None  # a write() refused: nothing commits, close() says why

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset : offset + size])

    def write(self, offset: int, buf: bytes) -> int:
        data = self.data
        assert isinstance(data, bytearray)
        if offset > len(data):
            data.extend(bytes(offset - len(data)))
        data[offset : offset + len(buf)] = buf
        self.dirty = self.written = True
        if self.scratch is not None:
            self.scratch.touch()
        if self.screen is not None and self.screen(data):
            self.screen = None
        return len(buf)

    def truncate(self, size: int) -> None:
        assert isinstance(self.data, bytearray)
        resize(self.data, size)
        self.dirty = True
        if self.scratch is not None:
            self.scratch.touch()

    async def commit_if_dirty(self, closing: bool = False) -> None:
        """Send the buffer to its commit target once; a failed commit is not retried, and
        after a refused write() nothing is sent (the file holds what the writer did not
        mean): each close repeats that refusal.

        Before any write() only the last close commits: a shell redirection opens the file,
        dup2()s and closes the first descriptor (a flush) before the command writes."""
        if self.refused is not None:
            raise self.refused
        if not self.dirty or self.commit is None or not (self.written or closing):
            return
        self.dirty = False
        await self.commit(bytes(self.data), self.uid)


def open_handle(
    ino: int, path: Path, node: Node, content: bytes, writable: bool, uid: int = 0
) -> FileHandle:
    """A handle over a scratch file's own buffer, or over a private copy of `content`."""
    if node.control is not None:
        return FileHandle(ino, path, content, writable, control=node.control, uid=uid)
    if node.scratch is not None:
        return FileHandle(
            ino, path, node.scratch.data, writable, node.commit, node.scratch, node.subject,
            imports=node.commit is not None, uid=uid,
        )
    data: bytearray | bytes = bytearray(content) if writable else content
    return FileHandle(ino, path, data, writable, node.commit, None, node.subject, uid=uid,
                      screen=node.screen)


@dataclasses.dataclass
class DirHandle:
    """A directory listing snapshot: readdir offsets index it, stable while it is open."""

    path: Path
    entries: list[tuple[str, Node]] | None  # None: listed at the first readdir
