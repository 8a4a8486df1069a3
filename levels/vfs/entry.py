"""The Entry protocol: what one path of the tree is and what each operation on it does.

An entry is made per request by `levels.vfs.tree.resolve` (cheap: a few fabric lookups)
and knows its path, its attributes and its rules. The base classes refuse every operation
with the domain error (levels/errors.py) that fsops/errors.py maps to the errno of the
contract; kinds override what they allow. Files answer open() with a snapshot (bytes) or a
RangeReader, commit() with what written bytes become, control() with a command's reply;
directories answer lookup(), list() and the namespace operations on their children
(mkdir, create, unlink, rmdir, symlink, rename_into).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, overload, runtime_checkable

from levels.errors import Invalid, NoAttribute, NotFound, NotSupported, ReadOnly
from levels.scratch import ScratchFile, is_scratch_name

if TYPE_CHECKING:
    from levels.fabric import Fabric

Path = tuple[str, ...]
DIR, FILE, LINK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
# Immutable content may be cached by the kernel for long; mutable files are re-asked.
IMMUTABLE_TIMEOUT = 300.0
DIR_TIMEOUT = 1.0
LARGE_FILE_IO = 1 << 20  # FUSE's largest request (libfuse 3 negotiates 256 pages)
# A circuit's directory and its latest.qasm: their names change only through this kernel
# (mkdir, rmdir, rename) or another host (whose changes drop them: the change feed), and
# every change on this host drops their attributes, so the kernel may keep both for long.
KEPT_TIMEOUT = 60.0
STARTED_NS = time.time_ns()
# The daemon's own ids, read once: a syscall per entry made would cost more than the walk.
UID, GID = os.getuid(), os.getgid()
XATTR_PREFIX = "user.qfs."
XATTR_FIELDS = ("description", "author", "tags", "parameters")
# A commit of written bytes: (content, uid of the writer) -> done, or a domain error.
Commit = Callable[[bytes, int], Awaitable[None]]


@runtime_checkable
class RangeReader(Protocol):
    """Content too large to hold per open (a decoded state): its size, and bytes per read."""

    size: int

    async def read(self, offset: int, size: int) -> bytes | memoryview: ...


Content = bytes | RangeReader


class WriteStream(Protocol):
    """A file's content taken as its writer writes it, in order, instead of buffered whole
    until close (an imported state vector is sealed chunk by chunk as it arrives)."""

    size: int  # bytes written so far

    async def write(self, offset: int, data: bytes) -> None:
        """Take the next bytes; a refusal raises (and nothing will commit)."""

    async def truncate(self, size: int) -> None:
        """ftruncate(): lengthen or refuse; a refusal raises (and nothing will commit)."""

    async def close(self) -> None:
        """Commit what was written, or raise the refusal (close()'s verdict)."""

    def abort(self) -> None:
        """Drop what was written: its writer went away without a commit."""
# What a directory lists (directories have a list() method, which hides the builtin):
# entries, or only their attributes where that is all readdir needs (a listing of 10,000
# circuits made 10,000 directory objects only to read their attributes: half its Python
# time). Never only the attributes of a file being written or of a live file, whose shown
# size and mtime need the entry itself.
Listing = Sequence[tuple[str, "Entry | Attrs"]]
Entries = list[tuple[str, "Entry | Attrs"]]  # a listing made whole
Names = list[str]


K = TypeVar("K")


class Uniform(Sequence[tuple[str, "Entry | Attrs"]]):
    """A listing of entries alike but for their names and mtimes (and sizes, where
    `size_of` gives them): every circuit's directory, every search hit's link. It holds
    (name, mtime) pairs read at opendir, then `rest`, never an entry per pair: making and
    keeping 10,000 entries cost more than the kernel's part of the listing and set off the
    garbage collector. readdir replies with one set of attributes, restamped per entry."""

    def __init__(self, stamps: Sequence[tuple[str, int]], shape: Attrs,
                 size_of: Callable[[str], int] | None = None,
                 rest: Sequence[tuple[str, Entry | Attrs]] = ()) -> None:
        self.stamps, self.shape, self.size_of, self._rest = stamps, shape, size_of, rest

    def __len__(self) -> int:
        return len(self.stamps) + len(self._rest)

    @overload
    def __getitem__(self, index: int) -> tuple[str, Entry | Attrs]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, Entry | Attrs]]: ...
    def __getitem__(self, index: int | slice
                    ) -> tuple[str, Entry | Attrs] | Sequence[tuple[str, Entry | Attrs]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if 0 <= index < len(self.stamps):
            return self._entry(self.stamps[index])
        return self._rest[index - len(self.stamps)]

    def _entry(self, stamp: tuple[str, int]) -> tuple[str, Attrs]:
        name, mtime_ns = stamp
        size = self.shape.size if self.size_of is None else self.size_of(name)
        return name, dataclasses.replace(self.shape, mtime_ns=mtime_ns, size=size)

    def stamps_from(self, start: int) -> Iterator[tuple[str, int]]:
        """The (name, mtime) pairs from offset `start` on, as readdir resumes a listing."""
        return _from_index(self.stamps, start)

    def entries_from(self, start: int) -> Iterator[tuple[str, Entry | Attrs]]:
        """Whole entries from offset `start` on, for callers other than readdir's."""
        return itertools.chain(map(self._entry, self.stamps_from(start)),
                               self.rest_from(start))

    def rest_from(self, start: int) -> Iterator[tuple[str, Entry | Attrs]]:
        """The entries after the pairs, from offset `start` of the whole listing on."""
        return itertools.islice(self._rest, max(0, start - len(self.stamps)), None)


def _from_index(items: Sequence[K], start: int) -> Iterator[K]:
    """Items from `start` on. A list's iterator is placed at `start` at once (its pickle
    protocol's __setstate__): islice steps through the `start` items before, and readdir
    resumes a listing of 10,000 circuits some 50 times."""
    if isinstance(items, list):
        iterator = iter(items)
        iterator.__setstate__(start)  # type: ignore[attr-defined]
        return iterator
    return itertools.islice(items, start, None)


def listed_from(listing: Listing, start: int) -> Iterator[tuple[str, Entry | Attrs]]:
    """A listing's entries from offset `start` on (readdir's offsets index the listing)."""
    if isinstance(listing, Uniform):
        return listing.entries_from(start)
    return itertools.islice(listing, start, None)


@dataclasses.dataclass(slots=True)
class Attrs:
    """What stat(2) shows of an entry, and how long the kernel may trust it."""

    kind: int
    perm: int
    mtime_ns: int
    size: int = 0
    attr_timeout: float = 0.0
    entry_timeout: float = DIR_TIMEOUT  # 0 for names that may vanish behind the kernel's back
    uid: int = UID
    gid: int = GID
    live: bool = False  # rendered per open: direct I/O, mtime from the ChangeClock
    immutable: bool = False  # never changes under this name: the page cache may keep it
    # Changes, but every change on this host drops its cached attributes and moves its mtime
    # or size, so the kernel drops its pages at the next read (FUSE auto_inval_data): the
    # page cache may keep it between changes.
    pages_follow_attrs: bool = False
    # st_blksize, the I/O size tools such as cp and Python's open() buffer by; 0 leaves the
    # kernel's page size. Large files say FUSE's request size, so a copy is one request
    # per MiB, not per 128 KiB.
    io_size: int = 0


def directory(mtime_ns: int, perm: int = 0o755, timeout: float = DIR_TIMEOUT,
              entry_timeout: float = DIR_TIMEOUT) -> Attrs:
    return Attrs(DIR, perm, mtime_ns, attr_timeout=timeout, entry_timeout=entry_timeout)


def immutable_file(size: int, mtime_ns: int, perm: int = 0o444, io_size: int = 0) -> Attrs:
    """A file whose bytes never change under its name (a version, a view, a stored blob)."""
    return Attrs(FILE, perm, mtime_ns, size=size, attr_timeout=IMMUTABLE_TIMEOUT,
                 immutable=True, io_size=io_size)


# The size a listing gives a file whose bytes are not made yet: more than any file holds.
UNMEASURED_SIZE = 1 << 62


def unmeasured_file(mtime_ns: int) -> Attrs:
    """A file listed before its bytes are made (their size is not known yet).

    Its attributes are never kept, so every stat asks for them, which makes the bytes:
    wherever st_size is seen, it is exact. The size the listing gives the kernel is larger
    than any file, because the kernel also reads by the size it holds, without asking:
    a page fault of a mapping, or sendfile on a descriptor opened earlier. A read past the
    bytes then ends where they end, and the kernel shrinks its size to that
    (fuse_short_read). A size too small would cut such reads short, and a listing may come
    after the kernel has learned the real size (the drawing then dropped from the cache)."""
    return Attrs(FILE, 0o444, mtime_ns, size=UNMEASURED_SIZE, attr_timeout=0.0)


class Entry:
    """One path. Every operation is refused unless the kind allows it: open() of what is
    not a file is EINVAL (Invalid; fsops answers EISDIR for a directory first), commit()
    of a read-only file EACCES (ReadOnly), namespace operations outside a directory that
    takes them EACCES, missing xattrs ENOATTR (NoAttribute)."""

    attrs: Attrs
    subject: str | None = None  # the circuit a refusal is reported under
    scratch: ScratchFile | None = None  # a tool's temporary: handles write its buffer in place
    link_target: str = ""
    live_content: bytes | None = None  # a live file's render (its changes move its mtime)
    readable = True  # a file with content (not a file being created, not a link)
    writable = False  # open(O_WRONLY) allowed
    commits = False  # what is written goes somewhere at close: commit()
    takes_buffer = False  # commit() gets the handle's buffer itself, not a copy (a state)
    renamable = False  # a rename may commit its bytes under another name: see taken()
    is_control = False  # each write() is one command: control()
    # Opened with FUSE direct I/O: the writer's bytes go straight to the daemon, the kernel
    # keeps no copy of them (a file only ever written, whose pages nobody would read).
    direct_io = False

    def __init__(self, fabric: Fabric, path: Path, attrs: Attrs) -> None:
        self.fabric = fabric
        self.path = path
        self.attrs = attrs

    @property
    def is_dir(self) -> bool:
        return self.attrs.kind == DIR

    def where(self) -> str:
        return "/" + "/".join(self.path)

    def refuse_write(self) -> ReadOnly:
        return ReadOnly(f"{'/'.join(self.path)} is read-only (versions, views and stats "
                        f"are immutable)")

    # -- files ----------------------------------------------------------------------------

    async def open(self) -> Content:
        """The content a new reader sees: a snapshot or a range reader."""
        raise Invalid(f"{self.where()} is not a file")

    async def read_all(self) -> bytes:
        content = await self.open()
        if isinstance(content, bytes):
            return content
        return bytes(await content.read(0, content.size))

    async def commit(self, data: bytes, uid: int) -> None:
        raise self.refuse_write()

    def screen(self, data: bytearray) -> bool:
        """Judge the bytes written so far, before close: True once satisfied, False while
        more are needed; raising a refusal fails that write()."""
        return True

    def stream(self, data: bytearray, uid: int) -> WriteStream | None:
        """Once screen() is satisfied: a stream to take the rest of the writes (given the
        bytes so far), or None to buffer them until close."""
        return None

    async def control(self, line: str, uid: int) -> str:
        raise self.refuse_write()

    async def truncate(self, size: int, uid: int) -> None:
        """truncate(2) without an open handle: the cut content is committed."""
        if not self.commits:
            raise self.refuse_write()
        content = (await self.read_all())[:size]
        self.fabric.budget.reserve(uid, self.path, len(content), size,
                                   self.fabric.scratch.bytes_of(uid), keep=False)
        await self.commit(content + bytes(size - len(content)), uid)

    def set_attrs(self, mode: int | None, uid: int | None, gid: int | None,
                  mtime_ns: int | None) -> None:
        """chmod, chown and utime of fabric files are accepted and ignored (README)."""

    def taken(self) -> None:
        """Its bytes were committed elsewhere by a rename: what the source name stops being
        (a kind that is `renamable` says)."""
        raise self.not_movable()

    def not_movable(self) -> Exception:
        return ReadOnly(f"{self.where()} cannot be renamed")

    # -- extended attributes ----------------------------------------------------------------

    async def getxattr(self, name: str) -> bytes:
        field(name)
        raise NoAttribute(f"{self.where()} holds no {name} (user.qfs.* live on circuit "
                          f"directories)")

    def listxattr(self) -> Names:
        return []

    async def setxattr(self, name: str, value: bytes) -> None:
        field(name, missing=NotSupported)  # ENOTSUP: sed -i and vim keep no ACLs here
        raise NotSupported(f"{self.where()} cannot hold {name} (user.qfs.* live on circuit "
                           f"directories)")

    async def removexattr(self, name: str) -> None:
        await self.getxattr(name)


def in_xattr_namespace(name: str) -> bool:
    """Whether an extended attribute name can be held anywhere in the tree (user.qfs.*).
    Any other name is not supported anywhere, and says so at once, without resolving the
    entry: `ls -l` asks for three (security.selinux and both POSIX ACLs: the kernel passes
    ACL names on to a daemon that did not ask to handle ACLs)."""
    return name.startswith(XATTR_PREFIX)


def field(name: str, missing: type[Exception] = NoAttribute) -> str:
    """The metadata field an xattr name stands for; other names raise `missing`."""
    got = name[len(XATTR_PREFIX):] if in_xattr_namespace(name) else ""
    if got not in (*XATTR_FIELDS, "created"):
        raise missing(f"no attribute {name}")
    return got


class Constant(Entry):
    """A file whose bytes are computed when it is resolved (st_size must be exact)."""

    def __init__(self, fabric: Fabric, path: Path, data: bytes, attrs: Attrs) -> None:
        attrs.size = len(data)
        super().__init__(fabric, path, attrs)
        self.data = data

    async def open(self) -> Content:
        return self.data


class Live(Constant):
    """Content that changes by itself (logs, status): rendered at each lookup, getattr and
    open, so st_size is the length of that render and a handle reads the render of its own
    open. Direct I/O keeps the page cache from serving an older render; the mtime is when
    the content was last seen to change (ChangeClock), so tar and rsync see a stable file."""

    def __init__(self, fabric: Fabric, path: Path, render: Callable[[], str],
                 perm: int = 0o444) -> None:
        data = render().encode()
        super().__init__(fabric, path, data, Attrs(FILE, perm, 0, live=True))
        self.live_content = data


class Stream(Entry):
    """A stream of lines (levels/events.py): size 0, read with direct I/O until the reader
    stops; each open subscribes anew and its reads wait for the next line."""

    def __init__(self, fabric: Fabric, path: Path, subscribe: Callable[[], RangeReader]) -> None:
        super().__init__(fabric, path, Attrs(FILE, 0o444, time.time_ns(), live=True))
        self._subscribe = subscribe

    async def open(self) -> Content:
        return self._subscribe()


class ControlFile(Live):
    """A sysfs-style control file: each write() is one command (its errno is the write's),
    a read gives the last reply. Kinds implement control().

    Its attributes are cached for a second, although each command changes its reply: a
    write() that succeeds makes the kernel forget the size and mtime it keeps (never the
    mode and owner), and fsops drops them after a refused one. So the next command's open
    asks for no attributes, and its write() no security.capability (the kernel keeps its
    no-privileges mark until attributes are fetched again)."""

    writable = True
    is_control = True

    def __init__(self, fabric: Fabric, path: Path) -> None:
        super().__init__(fabric, path, lambda: fabric.oplog.reply("/".join(path)), 0o666)
        self.attrs.attr_timeout = DIR_TIMEOUT

    async def truncate(self, size: int, uid: int) -> None:
        """`echo cmd > ctl` truncates first: a control file has nothing to cut."""


class Symlink(Entry):
    readable = False

    def __init__(self, fabric: Fabric, path: Path, target: str, mtime_ns: int,
                 timeout: float = 0.0) -> None:
        super().__init__(fabric, path, link(target, mtime_ns, timeout))
        self.link_target = target


def link(target: str, mtime_ns: int, timeout: float = 0.0) -> Attrs:
    """A symbolic link's attributes; `timeout`: how long the kernel may keep its name and
    attributes (0 for a link that may vanish behind its back)."""
    return Attrs(LINK, 0o777, mtime_ns, size=len(target.encode()), attr_timeout=timeout,
                 entry_timeout=timeout)


class NewFile(Entry):
    """A fabric file being created (or a rename's target): it exists once commit succeeds."""

    readable = False
    writable = commits = True

    def __init__(self, fabric: Fabric, path: Path, commit: Commit,
                 subject: str | None = None, on_time: Callable[[int], None] | None = None,
                 screen: Callable[[bytearray], bool] | None = None) -> None:
        super().__init__(fabric, path, Attrs(FILE, 0o644, time.time_ns(), entry_timeout=0.0))
        self._commit, self._on_time, self._screen = commit, on_time, screen
        self.subject = subject

    async def commit(self, data: bytes, uid: int) -> None:
        await self._commit(data, uid)

    def screen(self, data: bytearray) -> bool:
        return self._screen(data) if self._screen is not None else True

    async def truncate(self, size: int, uid: int) -> None:
        raise self.refuse_write()

    def set_attrs(self, mode: int | None, uid: int | None, gid: int | None,
                  mtime_ns: int | None) -> None:
        if mtime_ns is not None and self._on_time is not None:
            self._on_time(mtime_ns)


class Scratch(Entry):
    """A tool's temporary (levels/scratch.py): in memory, written in place, committed only
    when renamed onto a fabric file. chmod, chown and utime apply to it."""

    writable = renamable = True

    def __init__(self, fabric: Fabric, path: Path, file: ScratchFile,
                 commit: Commit | None = None, subject: str | None = None) -> None:
        super().__init__(fabric, path, Attrs(
            FILE, file.mode & 0o7777, file.mtime_ns, size=len(file.data), uid=file.uid,
            gid=file.gid, entry_timeout=DIR_TIMEOUT if commit is None else 0.0,
            attr_timeout=DIR_TIMEOUT))
        self.scratch, self._commit, self.subject = file, commit, subject
        self.commits = commit is not None  # an import: the scratch goes at release

    async def open(self) -> Content:
        return bytes(self.file.data)

    @property
    def file(self) -> ScratchFile:
        assert self.scratch is not None
        return self.scratch

    async def commit(self, data: bytes, uid: int) -> None:
        if self._commit is None:
            raise self.refuse_write()
        await self._commit(data, uid)

    async def truncate(self, size: int, uid: int) -> None:
        file = self.file
        self.fabric.budget.reserve(file.uid, self.path, len(file.data), size,
                                   self.fabric.scratch.bytes_of(file.uid), keep=False)
        resize(file.data, size)
        file.touch()

    def set_attrs(self, mode: int | None, uid: int | None, gid: int | None,
                  mtime_ns: int | None) -> None:
        file = self.file
        if mode is not None:
            file.mode = mode & 0o7777
        if uid is not None:
            file.uid = uid
        if gid is not None:
            file.gid = gid
        if mtime_ns is not None:
            file.mtime_ns = mtime_ns

    def taken(self) -> None:
        self.fabric.scratch.remove(self.path[:-1], self.path[-1])


def resize(data: bytearray, size: int) -> None:
    """Cut or zero-extend a buffer in place, as truncate(2) does to a file."""
    if size < len(data):
        del data[size:]
    else:
        data.extend(bytes(size - len(data)))


class Dir(Entry):
    """A directory: its children by name and the namespace operations on them. By default
    nothing can be made (EACCES), removed (EACCES once the child is found, else ENOENT)
    or renamed into it."""

    # Where tools may keep scratch files (levels/scratch.py).
    keeps_scratch = False

    async def lookup(self, name: str) -> Entry:
        raise NotFound(f"{self.where()}/{name}")

    def names(self) -> Names:
        return []

    async def list(self) -> Listing:
        """Every entry with its attributes (readdir returns them too)."""
        return [(n, await self.lookup(n)) for n in self.names()]

    def lists_late(self) -> bool:
        """Whether opendir leaves the listing to the first readdir (see CircuitDir)."""
        return False

    def listed(self) -> None:
        """The first readdir of a directory that lists late."""

    def child(self, name: str) -> Path:
        return (*self.path, name)

    async def mkdir(self, name: str, uid: int) -> None:
        raise ReadOnly("directories can only be made in /circuits (one per circuit) and "
                       "/states (one per imported state)")

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        raise ReadOnly(f"files cannot be created in {self.where()}")

    async def unlink(self, name: str) -> None:
        if self.keeps_scratch and self.fabric.scratch.find(self.path, name) is not None:
            self.fabric.scratch.remove(self.path, name)
            return
        await self.remove_child(name)

    async def remove_child(self, name: str) -> None:
        await self.lookup(name)
        raise ReadOnly(f"/{'/'.join(self.child(name))} cannot be removed")

    async def rmdir(self, name: str) -> None:
        await self.remove_child(name)

    async def symlink(self, name: str, target: str) -> None:
        raise ReadOnly("symbolic links are made only by qfs (similar/, /search); into a "
                       "circuit being filled, similar/ links are accepted")

    async def exists(self, name: str) -> bool:
        try:
            await self.lookup(name)
        except NotFound:
            return False
        return True

    # -- what a written file or a rename commits --------------------------------------------

    async def commit_target(self, name: str) -> Entry | None:
        """What writing a file `name` here, or renaming one onto it, commits (None: a
        plain name, where only scratch files may go)."""
        return None

    def defines(self, name: str) -> bool:
        """Whether `name` is a file the fabric defines here (never replaced by a rename)."""
        return False

    def not_kept(self, name: str) -> Invalid:
        return Invalid(f"{name}: a file {name} would not be kept here")

    def wrote(self, name: str, target: str = "") -> None:
        """A name written here (a circuit being filled shows it: levels/circuits.py)."""

    async def rename_into(self, name: str, src: Entry, uid: int) -> None:
        """rename(src, here/name). Onto a name that commits, src's bytes are committed
        (refused content leaves both names as they were) and src stops being; onto a
        scratch name in a directory that keeps them, the file moves (a fabric file leaves
        a scratch copy: an editor's backup). Else EACCES, or EINVAL for a name not kept."""
        if src.is_dir or not src.readable:
            raise src.not_movable()
        content = await src.read_all()
        target = await self.commit_target(name)
        if target is not None:
            if not src.renamable:  # refused before anything is committed
                raise src.not_movable()
            if src.scratch is not None:
                target.set_attrs(None, None, None, src.scratch.mtime_ns)  # rsync sets it first
            await target.commit(content, uid)
            self.wrote(name)
            src.taken()
            return
        if not self.keeps_scratch or self.defines(name):
            raise ReadOnly(f"/{'/'.join(self.child(name))} cannot be replaced by a rename")
        if not is_scratch_name(name):
            raise self.not_kept(name)
        scratch = self.fabric.scratch
        if src.scratch is not None:
            scratch.remove(src.path[:-1], src.path[-1])
            scratch.put(self.path, name, src.scratch)
        elif src.commits:
            # An editor moving latest.qasm aside as a backup: it gets a scratch copy and
            # the circuit keeps its latest version.
            if scratch.find(self.path, name) is not None:
                scratch.remove(self.path, name)
            new = scratch.create(self.path, name, 0o644, src.attrs.uid, src.attrs.gid)
            new.data.extend(content)
        else:
            raise src.not_movable()

    # -- scratch files ------------------------------------------------------------------------

    def scratch_entry(self, name: str) -> Entry:
        return Scratch(self.fabric, self.child(name), self.fabric.scratch.get(self.path, name),
                       subject=self.subject)

    def scratch_entries(self) -> Entries:
        return [(n, self.scratch_entry(n)) for n in self.fabric.scratch.names(self.path)]

    async def create_scratch_or_target(self, name: str, mode: int, uid: int, gid: int,
                                       scratch: bool) -> Entry:
        """create() where tools keep scratch files: a scratch file under a name tools give
        temporaries (or `scratch`), a file the fabric keeps (its write commits), or EINVAL
        with the reason: a file that would be gone after a remount is refused."""
        if scratch or is_scratch_name(name):
            self.fabric.scratch.create(self.path, name, mode, uid, gid)
            return self.scratch_entry(name)
        target = await self.commit_target(name)
        if target is None:
            raise self.not_kept(name)
        self.wrote(name)
        return target


class ChangeClock:
    """mtimes of live files: when each path's render was last seen to differ (bounded)."""

    def __init__(self, capacity: int = 65536) -> None:
        self._seen: collections.OrderedDict[Path, tuple[bytes, int]] = (
            collections.OrderedDict()
        )
        self._capacity = capacity

    def mtime(self, path: Path, content: bytes) -> int:
        digest = hashlib.blake2b(content, digest_size=16).digest()
        seen = self._seen.pop(path, None)
        if seen is None or seen[0] != digest:
            seen = (digest, time.time_ns())
        self._seen[path] = seen
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return seen[1]
