"""The sole pyfuse3.Operations: a protocol adapter only. Each handler takes the path of
its inode, resolves it to an entry of the tree (levels/vfs), makes one call and maps the
result to pyfuse3 types; the rules live in the entries, the errno table in fsops/errors.py.

Concurrency rule (as in s3ql): handler code between two awaits runs atomically on the trio
thread, and versions are committed only there, so commits are serialized and version
numbers have no gaps. Parsing, rendering and searching run in worker threads (a render
that finds a view unavailable notes why in the version's record, in a transaction of its
own).
"""

import contextlib
import errno
import logging
import os
import stat
import sys

import pyfuse3
import trio

from fsops.errors import QUIET, Guard, errno_of
from fsops.handles import DirHandle, FileHandle, open_handle
from fsops.inodes import InodeTable, Path
from levels import vfs
from levels.errors import Exists, Invalid, NotFound, NotPermitted, QfsError
from levels.events import EventReader
from levels.fabric import Fabric
from levels.vfs import Attrs, ChangeClock, Entry

log = logging.getLogger("qfs.fsops")

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
_DIR = stat.S_IFDIR


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _xattr_name(raw: bytes) -> str:
    """An extended attribute's name, only ever compared with user.qfs.* names."""
    return os.fsdecode(raw)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fabric: Fabric) -> None:
        super().__init__()
        self.fabric = fabric
        self.inodes = InodeTable()
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._writers: dict[int, set[int]] = {}  # inode -> open write handles
        self._next_fh = 1
        self._clock = ChangeClock()
        self._xattrs = fabric.config.performance.extended_attributes

    def forget_remote(self, path: Path) -> None:
        """Another host changed what `path` names (the fabric's change feed; trio's
        thread): later lookups get a fresh inode, the kernel drops its entry, and the old
        inode's attributes (a descriptor open on it would otherwise keep the old size)."""
        parent = self.inodes.known(path[:-1])
        if parent is None:
            return  # the kernel was never given its directory: nothing of it is cached
        old = self.inodes.known(path)
        self.inodes.detach(path)
        if old is not None:
            _drop_attrs(old)
        pyfuse3.invalidate_entry_async(parent, path[-1].encode(), ignore_enoent=True)

    def circuit_changed(self, name: str) -> None:
        """A circuit changed on this host (trio's thread): the kernel drops the attributes it
        keeps of the files the change shows in."""
        for path in vfs.cached_across_change(name):
            ino = self.inodes.known(path)
            if ino is not None:
                _drop_attrs(ino)

    # -- helpers -------------------------------------------------------------------------

    def _guard(self, op: str, path: Path = (), subject: str | None = None,
               quiet: tuple[type[QfsError], ...] = QUIET) -> Guard:
        return Guard(op, self.fabric.oplog, path, subject, vfs.subject_of, quiet)

    def _reserve(self, handle: FileHandle, size_after: int) -> None:
        """Hold a handle's growth against the file's and the user's bounds (levels/budget.py)
        before the buffer grows; a scratch file's bytes count as its owner's, and a stream
        holds none (each write is still checked against the bounds). A refusal stands for
        the handle, as a refused write() or truncate() does: nothing commits, and close()
        says why."""
        scratch = handle.entry.scratch
        uid, keep = (scratch.uid, False) if scratch is not None else (handle.uid, True)
        try:
            handle.reserved += self.fabric.budget.reserve(
                uid, handle.path, handle.size, size_after, self.fabric.scratch.bytes_of(uid),
                keep=keep and handle.stream is None)
        except QfsError as exc:
            handle.refused = exc
            raise

    def _attrs(self, ino: int, shown: Entry | Attrs) -> pyfuse3.EntryAttributes:
        """What stat shows of an entry, or of the attributes a listing gave in its place
        (a directory or a link: never written, never live)."""
        if isinstance(shown, Attrs):
            return _entry_attributes(ino, shown, shown.size, shown.mtime_ns)
        node = shown.attrs
        size = node.size
        writers = self._writers.get(ino)
        if writers and not shown.is_control:  # a control file's writers buffer nothing
            size = max(self._files[fh].size for fh in writers)
        mtime = node.mtime_ns
        if shown.live_content is not None:
            mtime = self._clock.mtime(self.inodes.path(ino), shown.live_content)
        return _entry_attributes(ino, node, size, mtime)

    async def _entry(self, ino: int) -> Entry:
        try:
            return await vfs.resolve(self.fabric, self.inodes.path(ino))
        except NotFound:
            writers = self._writers.get(ino)
            if not writers:
                raise
            # A file being created (e.g. a new result) exists for its writer before commit.
            return self._files[next(iter(writers))].entry

    async def _dir(self, ino: int) -> vfs.Dir:
        return await vfs.directory_at(self.fabric, self.inodes.path(ino))

    def _child(self, parent_inode: int, name: bytes, making: str | None = None) -> Path:
        """The path of `name` in a directory. The tree's names are UTF-8 text (the stores
        key by them): other bytes name nothing (ENOENT), and an operation `making` such a
        name is refused with EINVAL, reported against the directory."""
        parent = self.inodes.path(parent_inode)
        try:
            return (*parent, name.decode())
        except UnicodeDecodeError:
            if making is None:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            with self._guard(making, parent):
                raise Invalid(f"{name!r} is not UTF-8: names here are UTF-8 text") from None

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def _made(self, path: Path) -> pyfuse3.EntryAttributes:
        """The attributes of a name just made, with the kernel's lookup reference."""
        return self._attrs(self.inodes.remember(path), await vfs.resolve(self.fabric, path))

    # -- lookup and attributes -----------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            path = self.inodes.path(parent_inode)
        elif name == b"..":
            path = self.inodes.path(parent_inode)[:-1]
        else:
            path = self._child(parent_inode, name)
        with self._guard("lookup", path):
            return await self._made(path)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    async def getattr(self, inode, ctx=None):
        with self._guard("getattr"):
            return self._attrs(inode, await self._entry(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self.inodes.path(inode)
        with self._guard("setattr", path):
            entry = await self._entry(inode)
            if fields.update_size:
                handle = self._files.get(fh) if fh is not None else None
                if handle is not None and handle.writable:
                    self._reserve(handle, attr.st_size)
                    await handle.truncate(attr.st_size)
                else:
                    await entry.truncate(attr.st_size, ctx.uid)
            entry.set_attrs(
                attr.st_mode if fields.update_mode else None,
                attr.st_uid if fields.update_uid else None,
                attr.st_gid if fields.update_gid else None,
                attr.st_mtime_ns if fields.update_mtime else None)
            return self._attrs(inode, await self._entry(inode))

    async def readlink(self, inode, ctx):
        with self._guard("readlink"):
            entry = await self._entry(inode)
            if entry.attrs.kind != stat.S_IFLNK:
                raise Invalid("not a symbolic link")
            return os.fsencode(entry.link_target)

    async def statfs(self, ctx):
        with self._guard("statfs"):
            st = os.statvfs(self.fabric.data_dir)
            data = pyfuse3.StatvfsData()
            for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                        "f_ffree", "f_favail"):
                setattr(data, key, getattr(st, key))
            data.f_namemax = 255
            return data

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, inode, ctx):
        path = self.inodes.path(inode)
        with self._guard("opendir", path):
            directory = await self._dir(inode)
            entries = None if directory.lists_late() else await directory.list()
            fh = self._new_fh()
            self._dirs[fh] = DirHandle(path, entries)
            return fh

    async def readdir(self, fh, start_id, token):
        handle = self._dirs[fh]
        with self._guard("readdir", handle.path):
            if handle.entries is None:
                directory = await vfs.directory_at(self.fabric, handle.path)
                directory.listed()
                handle.entries = await directory.list()
            entries = handle.entries
            if isinstance(entries, vfs.Uniform):
                if not self._reply_stamped(token, handle.path, entries, start_id):
                    return
                rest = entries.rest_from(start_id)
                start_id = max(start_id, len(entries.stamps))
            else:
                rest = vfs.listed_from(entries, start_id)
            parent, inodes = handle.path, self.inodes
            for offset, (name, entry) in enumerate(rest, start_id + 1):
                ino = inodes.child_ino(parent, name)
                attrs = _entry_attributes(ino, entry, entry.size, entry.mtime_ns) \
                    if type(entry) is Attrs else self._attrs(ino, entry)
                if not pyfuse3.readdir_reply(token, name.encode(_FS_ENCODING, _FS_ERRORS),
                                             attrs, offset):
                    return
                inodes.referenced(ino)

    def _reply_stamped(self, token: pyfuse3.ReaddirToken, parent: Path, listing: vfs.Uniform,
                       start: int) -> bool:
        """readdir's replies for the pairs of a Uniform listing (most of /circuits and
        /search): one set of attributes, restamped per entry with its inode, times and size
        where sizes differ (readdir_reply copies them). False once the reply is full."""
        shape, size_of, inodes = listing.shape, listing.size_of, self.inodes
        attrs = _entry_attributes(0, shape, shape.size, 0)
        stamped_mtime, stamped_size = 0, shape.size  # each set again only when it differs
        for offset, (name, mtime) in enumerate(listing.stamps_from(start), start + 1):
            ino = inodes.child_ino(parent, name)
            attrs.st_ino = ino
            if mtime != stamped_mtime:
                attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = stamped_mtime = mtime
            if size_of is not None and (size := size_of(name)) != stamped_size:
                attrs.st_size = stamped_size = size
                attrs.st_blocks = (size + 511) // 512
            if not pyfuse3.readdir_reply(token, name.encode(_FS_ENCODING, _FS_ERRORS),
                                         attrs, offset):
                return False
            inodes.referenced(ino)
        return True

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name, "mkdir")
        with self._guard("mkdir", path):
            await (await self._dir(parent_inode)).mkdir(path[-1], ctx.uid)
            return await self._made(path)

    async def rmdir(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        with self._guard("rmdir", path):
            await (await self._dir(parent_inode)).rmdir(path[-1])
            self.inodes.detach(path)

    # -- names ---------------------------------------------------------------------------

    async def unlink(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        with self._guard("unlink", path):
            await (await self._dir(parent_inode)).unlink(path[-1])
            self.inodes.detach(path)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self._child(new_parent_inode, new_name, "link")
        with self._guard("link", path):
            raise NotPermitted("hard links are not kept here: cp the file")

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        path = self._child(parent_inode, name, "mknod")
        with self._guard("mknod", path):
            raise NotPermitted("special files (fifos, sockets, devices) are not kept here")

    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name, "symlink")
        with self._guard("symlink", path):
            await (await self._dir(parent_inode)).symlink(path[-1], os.fsdecode(target))
            return await self._made(path)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        src = self._child(parent_inode_old, name_old)
        dst = self._child(parent_inode_new, name_new, "rename")
        with self._guard("rename", dst):
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise Invalid("RENAME_EXCHANGE is not supported")
            parent = await self._dir(parent_inode_new)
            if flags & pyfuse3.RENAME_NOREPLACE and await parent.exists(dst[-1]):
                raise Exists(f"/{'/'.join(dst)} exists")
            await parent.rename_into(dst[-1], await vfs.resolve(self.fabric, src), ctx.uid)
            self.inodes.move(src, dst)
            await self._follow(src, dst)

    async def _follow(self, src: Path, dst: Path) -> None:
        """Descriptors open inside a renamed directory follow it, as on any filesystem: a
        writer commits where its file now is (a circuit's latest.qasm under the circuit's
        new name, not a new circuit of the old one), a listing names children by the new
        path (its snapshot, taken at opendir, is taken again at the next readdir). A renamed
        file's own descriptors keep what they are (a scratch file renamed onto latest.qasm
        has committed already)."""
        depth = len(src)
        for listing in self._dirs.values():
            if listing.path[:depth] == src:  # listed again, under its new path, when read
                listing.path, listing.entries = (*dst, *listing.path[depth:]), None
        for handle in self._files.values():
            if handle.writable and len(handle.path) > depth and handle.path[:depth] == src:
                with contextlib.suppress(QfsError):
                    moved = await vfs.resolve(self.fabric, (*dst, *handle.path[depth:]))
                    if type(moved) is type(handle.entry):
                        handle.entry = moved

    # -- files ---------------------------------------------------------------------------

    def _register(self, handle: FileHandle) -> int:
        fh = self._new_fh()
        self._files[fh] = handle
        if handle.writable:
            self._writers.setdefault(handle.ino, set()).add(fh)
        return fh

    @staticmethod
    def _file_info(fh: int, entry: Entry) -> pyfuse3.FileInfo:
        attrs = entry.attrs
        return pyfuse3.FileInfo(fh=fh, direct_io=attrs.live or entry.direct_io,
                                keep_cache=_keeps_pages(attrs))

    async def open(self, inode, flags, ctx):
        path = self.inodes.path(inode)
        with self._guard("open", path):
            entry = await self._entry(inode)
            if entry.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            writable = bool(flags & WRITE_FLAGS)
            if writable and not entry.writable:
                raise entry.refuse_write()
            # libfuse3 negotiates atomic O_TRUNC: truncation arrives here, not as setattr.
            truncate = writable and bool(flags & os.O_TRUNC) and not entry.is_control
            if entry.scratch is not None or truncate:
                content: vfs.Content = b""
            else:
                content = await (entry.read_all() if writable else entry.open())
            if isinstance(content, EventReader):
                content.watch(ctx.pid)  # its reads end when this process is interrupted
            handle = open_handle(inode, entry, content, writable, ctx.uid)
            if truncate:
                await handle.truncate(0, at_open=True)
            return self._file_info(self._register(handle), entry)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name, "create")
        with self._guard("create", path):
            entry = await (await self._dir(parent_inode)).create(path[-1], mode, ctx.uid,
                                                                   ctx.gid)
            ino = self.inodes.remember(path)
            handle = open_handle(ino, entry, b"", True, ctx.uid)
            # A new fabric file commits even when empty (an empty import makes the circuit).
            handle.dirty = entry.scratch is None or entry.commits
            fh = self._register(handle)
            return self._file_info(fh, entry), self._attrs(ino, entry)

    async def read(self, fh, off, size):
        handle = self._files[fh]
        with self._guard("read", handle.path, handle.entry.subject):
            return await handle.read(off, size)

    async def write(self, fh, off, buf):
        handle = self._files[fh]
        if not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        if handle.entry.is_control:
            return await self._control(handle, buf)
        with self._guard("write", handle.path, handle.entry.subject):
            self._reserve(handle, max(handle.size, off + len(buf)))
            return await handle.write(off, buf)

    async def _control(self, handle: FileHandle, buf: bytes) -> int:
        """One command per write(): its errno is the write's, its reply the file's content."""
        with self._guard("write", handle.path, quiet=()):  # `run nowhere`'s ENOENT too
            try:
                reply = await handle.entry.control(_command_line(buf), handle.uid)
            except QfsError as exc:
                name = errno.errorcode.get(errno_of(exc), "EIO")
                self._answer(handle, f"error: {name}: {exc}")
                _drop_attrs(handle.ino)  # a failed write() leaves the kernel's size as it was
                raise
            except Exception as exc:  # a bug: the guard logs it; the ctl still answers
                self._answer(handle, f"error: EIO: internal error: {type(exc).__name__}: {exc}")
                _drop_attrs(handle.ino)
                raise
            self._answer(handle, f"ok: {reply}")
            return len(buf)

    def _answer(self, handle: FileHandle, text: str) -> None:
        """The reply every later open reads, and the one this descriptor reads back."""
        key = "/".join(handle.path)
        self.fabric.oplog.set_reply(key, text)
        handle.data = bytearray(self.fabric.oplog.reply(key).encode())

    async def flush(self, fh):
        handle = self._files[fh]
        with self._guard("close", handle.path, handle.entry.subject):
            try:
                await handle.commit_if_dirty()
            finally:
                if handle.writable:
                    await _forget_written(handle)

    async def fsync(self, fh, datasync):
        handle = self._files[fh]
        with self._guard("fsync", handle.path, handle.entry.subject):
            await handle.commit_if_dirty()
            await trio.to_thread.run_sync(self.fabric.make_durable)

    async def release(self, fh):
        handle = self._files.pop(fh)
        self.fabric.budget.give_back(handle.uid, handle.reserved)
        writers = self._writers.get(handle.ino)
        if writers is not None:
            writers.discard(fh)
            if not writers:
                del self._writers[handle.ino]
        try:
            with self._guard("release", handle.path, handle.entry.subject):
                if handle.refused is None:  # else close() has said why already
                    await handle.commit_if_dirty(closing=True)
        except pyfuse3.FUSEError:
            pass  # release errors never reach the caller; the reason is in the log
        finally:
            await handle.discard()  # a stream not committed
        if handle.writable:
            await _forget_written(handle)
        scratch = handle.entry.scratch
        if scratch is not None and handle.entry.commits and not any(
            h.entry.scratch is scratch for h in self._files.values()
        ):
            # An import's scratch file (/circuits/<name>.qasm) goes once committed.
            parent, leaf = handle.path[:-1], handle.path[-1]
            if self.fabric.scratch.find(parent, leaf) is scratch:
                self.fabric.scratch.remove(parent, leaf)

    # -- extended attributes: the entry's (circuit metadata, pins on versions) ------------

    def _without_xattrs(self) -> None:
        """With extended attributes off, ENOSYS: the kernel asks no more for the mount's
        life (getxattr, setxattr and listxattr each), and tools read EOPNOTSUPP."""
        if not self._xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    async def getxattr(self, inode, name, ctx):
        self._without_xattrs()
        decoded = _xattr_name(name)
        if not vfs.in_xattr_namespace(decoded):
            # ENOTSUP, not ENODATA: coreutils' ls -l then takes the whole filesystem for one
            # without SELinux labels and ACLs and stops asking; after ENODATA it asked every
            # entry three times (~45 us a request: ls -l of 10,000 circuits 1.4 s).
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        with self._guard("getxattr"):
            return await (await self._entry(inode)).getxattr(decoded)

    async def listxattr(self, inode, ctx):
        self._without_xattrs()
        with self._guard("listxattr"):
            return [n.encode() for n in (await self._entry(inode)).listxattr()]

    async def setxattr(self, inode, name, value, ctx):
        self._without_xattrs()
        with self._guard("setxattr", self.inodes.path(inode)):
            await (await self._entry(inode)).setxattr(_xattr_name(name), value)

    async def removexattr(self, inode, name, ctx):
        self._without_xattrs()
        with self._guard("removexattr", self.inodes.path(inode)):
            await (await self._entry(inode)).removexattr(_xattr_name(name))


def _entry_attributes(ino: int, node: Attrs, size: int, mtime_ns: int) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()  # says 1 link, size 0, 0 blocks of 4096 bytes
    attr.st_ino = ino
    attr.st_mode = node.kind | node.perm
    if node.kind == _DIR:
        attr.st_nlink = 2
    attr.st_uid = node.uid
    attr.st_gid = node.gid
    if size:
        attr.st_size = size
        attr.st_blocks = (size + 511) // 512
    if node.io_size:
        attr.st_blksize = node.io_size
    attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
    attr.attr_timeout = node.attr_timeout
    attr.entry_timeout = node.entry_timeout
    return attr


def _keeps_pages(attrs: Attrs) -> bool:
    """Whether the kernel keeps a file's pages between opens (FUSE keep_cache)."""
    return attrs.immutable or attrs.pages_follow_attrs


def _drop_attrs(ino: int) -> None:
    """The kernel forgets the attributes it caches of `ino` (attributes only: no page lock
    is taken, so this is safe inside a request on the same inode)."""
    with contextlib.suppress(OSError):  # ENOENT: the kernel holds no such inode
        pyfuse3.invalidate_inode(ino, attr_only=True)


async def _forget_written(handle: FileHandle) -> None:
    """After a writer's close the kernel forgets the size it keeps (the writer's, kept or
    refused) and, of a file whose pages it keeps, the written pages: refused bytes would
    otherwise be served from them to every later reader (bytes written over a version, or
    of latest.qasm's old length). A control file's are already right (vfs.ControlFile); a
    handle not written since its last close has nothing to drop (cp's close is a FLUSH then
    a RELEASE)."""
    if handle.entry.is_control or not handle.unsettled:
        return
    handle.unsettled = False
    _drop_attrs(handle.ino)
    if _keeps_pages(handle.entry.attrs):
        # Not on trio's thread: the kernel locks each page, and a reader may hold one while
        # it waits for this daemon to answer its read.
        await trio.to_thread.run_sync(_drop_pages, handle.ino)


def _drop_pages(ino: int) -> None:
    with contextlib.suppress(OSError):
        pyfuse3.invalidate_inode(ino, attr_only=False)


def _command_line(buf: bytes) -> str:
    try:
        return bytes(buf).decode()
    except UnicodeDecodeError as exc:
        raise Invalid("commands are UTF-8 text") from exc
