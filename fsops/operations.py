"""The sole pyfuse3.Operations: resolve inode -> path -> node, call levels/, map errors.

Concurrency rule (as in s3ql): handler code between two awaits runs atomically on the trio
thread, and LMDB write transactions happen only there, so commits are serialized and version
numbers have no gaps. Parsing, rendering and searching run in worker threads.
"""

import errno
import json
import logging
import os
import stat
from typing import Any

import pyfuse3
import trio

from fsops import routes, state_routes, workflow_routes
from fsops.errors import errno_of, guarded
from fsops.handles import DirHandle, FileHandle, open_handle, resize
from fsops.inodes import InodeTable, Path
from fsops.nodes import IMMUTABLE_TIMEOUT, ChangeClock, Node
from levels.circuits import CircuitStore, parse_iso
from levels.errors import Exists, Invalid, NotEmpty, NotFound, QfsError, ReadOnly
from levels.fabric import Fabric
from levels.scratch import is_scratch_name

log = logging.getLogger("qfs.fsops")

XATTR_PREFIX = "user.qfs."
XATTR_FIELDS = ("description", "author", "tags", "parameters")
PINNED = "user.qfs.pinned"  # on vN.qasm: "1" keeps the version beyond retention
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


def _name(raw: bytes) -> str:
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

    def forget_remote(self, path: Path) -> None:
        """Another host changed what `path` names (the fabric's change feed; trio's
        thread): later lookups get a fresh inode, the kernel drops its entry and pages."""
        parent = self.inodes.ino(path[:-1])
        self.inodes.detach(path)
        pyfuse3.invalidate_entry_async(parent, path[-1].encode(), ignore_enoent=True)

    # -- helpers -------------------------------------------------------------------------

    def _guard(self, op: str, path: Path = (), subject: str | None = None):
        if subject is None and len(path) >= 2 and path[0] == routes.CIRCUITS:
            subject = path[1]
        where = f"{op} /{'/'.join(path)}" if path else op
        return guarded(where, self.fabric.oplog, subject)

    def _reserve(self, handle: FileHandle, size_after: int) -> None:
        """Hold a handle's growth against the file's and the user's bounds (levels/budget.py)
        before the buffer grows; a scratch file's bytes count as its owner's."""
        if handle.scratch is not None:
            uid, keep = handle.scratch.uid, False
        else:
            uid, keep = handle.uid, True
        handle.reserved += self.fabric.budget.reserve(
            uid, handle.path, len(handle.data), size_after, self.fabric.scratch.bytes_of(uid),
            keep=keep)

    def _attrs(self, ino: int, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.st_mode = node.kind | node.perm
        attr.st_nlink = 2 if node.is_dir else 1
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        size = node.size
        writers = self._writers.get(ino)
        if writers:
            size = max(len(self._files[fh].data) for fh in writers)
        attr.st_size = size
        attr.st_blksize = 4096
        attr.st_blocks = (size + 511) // 512
        mtime = node.mtime_ns
        if node.live:
            mtime = self._clock.mtime(self.inodes.path(ino), node.content)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime
        attr.attr_timeout = node.attr_timeout
        attr.entry_timeout = node.entry_timeout
        return attr

    async def _node(self, ino: int) -> tuple[Path, Node]:
        path = self.inodes.path(ino)
        try:
            return path, await routes.resolve(self.fabric, path)
        except NotFound:
            writers = self._writers.get(ino)
            if not writers:
                raise
            # A file being created (e.g. a new result) exists for its writer before commit.
            handle = self._files[next(iter(writers))]
            return path, Node(stat.S_IFREG, 0o644, 0, size=len(handle.data))

    def _child(self, parent_ino: int, name: bytes) -> Path:
        return (*self.inodes.path(parent_ino), _name(name))

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- lookup and attributes -----------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        text = _name(name)
        parent = self.inodes.path(parent_inode)
        if text == ".":
            path = parent
        elif text == "..":
            path = parent[:-1]
        else:
            path = (*parent, text)
        with self._guard("lookup", path):
            node = await routes.resolve(self.fabric, path)
            return self._attrs(self.inodes.remember(path), node)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    async def getattr(self, inode, ctx=None):
        with self._guard("getattr"):
            _path, node = await self._node(inode)
            return self._attrs(inode, node)

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self.inodes.path(inode)
        with self._guard("setattr", path):
            _path, node = await self._node(inode)
            if fields.update_size:
                await self._truncate(path, node, fh, attr.st_size, ctx.uid)
            if node.scratch is not None:
                if fields.update_mode:
                    node.scratch.mode = attr.st_mode & 0o7777
                if fields.update_uid:
                    node.scratch.uid = attr.st_uid
                if fields.update_gid:
                    node.scratch.gid = attr.st_gid
                if fields.update_mtime:
                    node.scratch.mtime_ns = attr.st_mtime_ns
            elif fields.update_mtime:
                self._written_back_time(path, attr.st_mtime_ns)
            # chmod/chown/utime on fabric files are accepted and ignored (README SEMANTICS),
            # but for the time of a version written back.
            _path, node = await self._node(inode)
            return self._attrs(inode, node)

    def _written_back_time(self, path: Path, mtime_ns: int) -> None:
        """The time cp -a, tar and rsync set on vN.qasm they write back is version N's."""
        version = routes.parse_version_file(path[2]) if len(path) == 3 else None
        if version is None or version[1] != "qasm" or path[0] != routes.CIRCUITS:
            return
        fill = self.fabric.circuits.filling(path[1])
        if fill is not None and fill.fresh:
            self.fabric.circuits.set_version_time(path[1], version[0], mtime_ns)

    async def _truncate(self, path: Path, node: Node, fh: int | None, size: int,
                        uid: int) -> None:
        handle = self._files.get(fh) if fh is not None else None
        if handle is not None and handle.writable:
            self._reserve(handle, size)
            handle.truncate(size)
        elif node.scratch is not None:
            scratch = node.scratch
            self.fabric.budget.reserve(scratch.uid, path, len(scratch.data), size,
                                       self.fabric.scratch.bytes_of(scratch.uid), keep=False)
            resize(scratch.data, size)
            scratch.touch()
        elif node.control is not None:
            pass  # `echo cmd > ctl` truncates first: control files have nothing to cut
        elif node.commit is not None and node.read is not None:
            content = (await node.read())[:size]
            self.fabric.budget.reserve(uid, path, len(content), size,
                                       self.fabric.scratch.bytes_of(uid), keep=False)
            await node.commit(content + bytes(size - len(content)), uid)
        else:
            raise routes.refuse_write(path)

    async def readlink(self, inode, ctx):
        with self._guard("readlink"):
            _path, node = await self._node(inode)
            if node.kind != stat.S_IFLNK:
                raise Invalid("not a symbolic link")
            return os.fsencode(node.link_target)

    async def statfs(self, ctx):
        with self._guard("statfs"):
            return self._statfs()

    def _statfs(self) -> pyfuse3.StatvfsData:
        vfs = os.statvfs(self.fabric.data_dir)
        data = pyfuse3.StatvfsData()
        data.f_bsize = vfs.f_bsize
        data.f_frsize = vfs.f_frsize
        data.f_blocks = vfs.f_blocks
        data.f_bfree = vfs.f_bfree
        data.f_bavail = vfs.f_bavail
        data.f_files = vfs.f_files
        data.f_ffree = vfs.f_ffree
        data.f_favail = vfs.f_favail
        data.f_namemax = 255
        return data

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, inode, ctx):
        path = self.inodes.path(inode)
        with self._guard("opendir", path):
            # A circuit being written back is listed at the first readdir, which ends that
            # (Filling): tar x opens the directory it extracts into, without listing it.
            filling = routes.is_circuit_dir(self.fabric, path) and \
                self.fabric.circuits.filling(path[1]) is not None
            entries = None if filling else await routes.list_dir(self.fabric, path)
            fh = self._new_fh()
            self._dirs[fh] = DirHandle(path, entries)
            return fh

    async def readdir(self, fh, start_id, token):
        handle = self._dirs[fh]
        with self._guard("readdir", handle.path):
            await self._readdir(handle, start_id, token)

    async def _readdir(self, handle: DirHandle, start_id: int, token) -> None:
        if handle.entries is None:
            self.fabric.circuits.end_filling(handle.path[1])
            handle.entries = await routes.list_dir(self.fabric, handle.path)
        for index in range(start_id, len(handle.entries)):
            name, node = handle.entries[index]
            path = (*handle.path, name)
            ino = self.inodes.ino(path)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(ino, node),
                                         index + 1):
                return
            self.inodes.remember(path)

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        with self._guard("mkdir", path):
            if len(path) == 2 and path[0] == state_routes.STATES:
                self.fabric.states.make_pending(path[1], ctx.uid)
                return self._attrs(self.inodes.remember(path),
                                   await routes.resolve(self.fabric, path))
            filling = len(path) == 3 and routes.is_circuit_dir(self.fabric, path[:2]) and \
                self.fabric.circuits.filling(path[1]) is not None
            if filling and path[2] in ("results", "similar"):
                routes.written(self.fabric, path)  # a backup's directories, written back
                return self._attrs(self.inodes.remember(path),
                                   await routes.resolve(self.fabric, path))
            if len(path) != 2 or path[0] != routes.CIRCUITS:
                raise ReadOnly("directories can only be made in /circuits (one per circuit) "
                               "and /states (one per imported state)")
            if self.fabric.scratch.find(path[:-1], path[1]) is not None:
                raise Exists(f"{path[1]} exists")
            self.fabric.circuits.create(path[1])
            self.fabric.circuits.begin_filling(path[1])
            return self._attrs(self.inodes.remember(path), await routes.resolve(self.fabric, path))

    async def rmdir(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        with self._guard("rmdir", path):
            if routes.is_circuit_dir(self.fabric, path):
                self.fabric.circuits.delete(path[1])
                self.fabric.scratch.drop_tree(path)
                self.fabric.oplog.forget_subject(path[1])
                self.inodes.detach(path)
                return
            if len(path) == 2 and path[0] == state_routes.STATES:
                # off trio's thread: it may wait for a checkpoint putting its blob
                await trio.to_thread.run_sync(self.fabric.states.remove_dir, path[1])
                self.inodes.detach(path)
                return
            if len(path) == 3 and path[0] == routes.CIRCUITS and path[2] in ("results", "similar"):
                if path[2] == "results" and self.fabric.circuits.results(path[1]):
                    raise NotEmpty(f"{path[1]}/results still holds results")
                return  # rm -r of a circuit passes through here: a no-op, the dir is virtual
            await routes.resolve(self.fabric, path)
            raise ReadOnly(f"/{'/'.join(path)} cannot be removed")

    # -- names ---------------------------------------------------------------------------

    async def unlink(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        with self._guard("unlink", path):
            parent = path[:-1]
            if self.fabric.scratch.find(parent, path[-1]) is not None:
                self.fabric.scratch.remove(parent, path[-1])
                self.inodes.detach(path)
                return
            result = len(path) == 4 and path[2] == "results" and \
                routes.picture_run(path[3]) is None
            if path[0] == routes.CIRCUITS and result:
                self.fabric.circuits.delete_result(path[1], path[3])
                self.inodes.detach(path)
                return
            if path[0] == routes.CIRCUITS and len(path) in (3, 4):
                # A circuit's files are facets of it: `rm` of one deletes nothing and hides
                # it until it is written again or the circuit listed, so that `rm -r`
                # reaches the rmdir that deletes the circuit and tar x can write it back.
                # (A histogram goes with its result, which rm -r may have deleted first.)
                if len(path) == 3 or path[2] != "results":
                    await routes.resolve(self.fabric, path)
                self.fabric.circuits.hide(path[1], "/".join(path[2:]))
                self.inodes.detach(path)
                return
            if state_routes.is_checkpoint_file(self.fabric, path):
                await routes.resolve(self.fabric, path)
                return
            await routes.resolve(self.fabric, path)
            raise ReadOnly(f"/{'/'.join(path)} cannot be removed")

    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        with self._guard("symlink", path):
            filling = routes.is_circuit_dir(self.fabric, path[:2]) and \
                self.fabric.circuits.filling(path[1]) is not None
            if not (filling and len(path) == 4 and path[2] == "similar"):
                raise ReadOnly("symbolic links are made only by qfs (similar/, /search); "
                               "into a circuit being filled, similar/ links are accepted")
            routes.written(self.fabric, path, os.fsdecode(target))
            return self._attrs(self.inodes.remember(path),
                               await routes.resolve(self.fabric, path))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        src = self._child(parent_inode_old, name_old)
        dst = self._child(parent_inode_new, name_new)
        with self._guard("rename", dst):
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise Invalid("RENAME_EXCHANGE is not supported")
            if flags & pyfuse3.RENAME_NOREPLACE and await self._exists(dst):
                raise Exists(f"/{'/'.join(dst)} exists")
            await self._rename(src, dst, ctx.uid)
            self.inodes.move(src, dst)

    async def _exists(self, path: Path) -> bool:
        try:
            await routes.resolve(self.fabric, path)
        except NotFound:
            return False
        return True

    async def _rename(self, src: Path, dst: Path, uid: int) -> None:
        fabric = self.fabric
        if routes.is_circuit_dir(fabric, src):
            if len(dst) != 2 or dst[0] != routes.CIRCUITS:
                raise Invalid("a circuit can only be renamed within /circuits")
            fabric.circuits.rename(src[1], dst[1])
            fabric.scratch.move_tree(src, dst)
            fabric.oplog.rename_subject(src[1], dst[1])
            return
        node = await routes.resolve(fabric, src)
        if node.is_dir or node.read is None:
            raise ReadOnly(f"/{'/'.join(src)} cannot be renamed")
        content = await node.read()
        target = routes.commit_target(fabric, dst)
        if target is not None:
            if node.scratch is not None:
                self._written_back_time(dst, node.scratch.mtime_ns)  # rsync sets it first
            await target(content, uid)  # refused content leaves both names as they were
            if len(dst) > 2 and dst[0] == routes.CIRCUITS:
                routes.written(fabric, dst)
            if node.scratch is not None:
                fabric.scratch.remove(src[:-1], src[-1])
            elif len(src) == 4 and src[2] == "results":
                fabric.circuits.delete_result(src[1], src[3])
            return
        if not routes.scratch_dir(fabric, dst[:-1]) or routes.fabric_file(fabric, dst):
            raise ReadOnly(f"/{'/'.join(dst)} cannot be replaced by a rename")
        if not is_scratch_name(dst[-1]):
            raise routes.not_kept(dst)
        if node.scratch is not None:
            fabric.scratch.remove(src[:-1], src[-1])
            fabric.scratch.put(dst[:-1], dst[-1], node.scratch)
        elif node.commit is not None:
            # An editor moving latest.qasm aside as a backup: it gets a scratch copy and the
            # circuit keeps its latest version.
            copy = fabric.scratch.find(dst[:-1], dst[-1])
            if copy is not None:
                fabric.scratch.remove(dst[:-1], dst[-1])
            new = fabric.scratch.create(dst[:-1], dst[-1], 0o644, node.uid, node.gid)
            new.data.extend(content)
        else:
            raise ReadOnly(f"/{'/'.join(src)} cannot be renamed")

    # -- files ---------------------------------------------------------------------------

    def _register(self, handle: FileHandle) -> int:
        fh = self._new_fh()
        self._files[fh] = handle
        if handle.writable:
            self._writers.setdefault(handle.ino, set()).add(fh)
        return fh

    def _file_info(self, fh: int, node: Node) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(
            fh=fh, direct_io=node.live, keep_cache=node.attr_timeout >= IMMUTABLE_TIMEOUT
        )

    async def open(self, inode, flags, ctx):
        path = self.inodes.path(inode)
        with self._guard("open", path):
            _path, node = await self._node(inode)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            writable = bool(flags & WRITE_FLAGS)
            if writable and node.commit is None and node.scratch is None and not node.control:
                raise routes.refuse_write(path)
            # libfuse3 negotiates atomic O_TRUNC: truncation arrives here, not as setattr.
            truncate = writable and bool(flags & os.O_TRUNC) and node.control is None
            content = b"" if node.scratch is not None or truncate else await node.read()
            handle = open_handle(inode, path, node, content, writable, ctx.uid)
            if truncate:
                handle.truncate(0)
            return self._file_info(self._register(handle), node)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        with self._guard("create", path):
            fabric = self.fabric
            parent = path[:-1]
            if routes.scratch_dir(fabric, parent):
                node = routes.create_node(fabric, path, mode, ctx.uid, ctx.gid)
            elif path[0] == state_routes.STATES:
                node = state_routes.import_node(fabric, path)
            elif (submit := workflow_routes.submit_target(fabric, path)) is not None:
                node = workflow_routes.definition(submit)
            else:
                raise ReadOnly(f"files cannot be created in /{'/'.join(parent)}")
            ino = self.inodes.remember(path)
            handle = open_handle(ino, path, node, b"", True, ctx.uid)
            # A new fabric file commits even when empty (an empty import makes the circuit).
            handle.dirty = node.scratch is None or node.commit is not None
            fh = self._register(handle)
            return self._file_info(fh, node), self._attrs(ino, node)

    async def read(self, fh, off, size):
        handle = self._files[fh]
        with self._guard("read", handle.path, handle.subject):
            return handle.read(off, size)

    async def write(self, fh, off, buf):
        handle = self._files[fh]
        if not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        if handle.control is None:
            with self._guard("write", handle.path, handle.subject):
                try:
                    self._reserve(handle, max(len(handle.data), off + len(buf)))
                except QfsError as exc:
                    handle.refused = exc  # a refused write changes nothing, even at close
                    raise
                return handle.write(off, buf)
        key = "/".join(handle.path)
        with self._guard("write", handle.path):
            try:
                reply = await handle.control(_command_line(buf), handle.uid)
            except QfsError as exc:
                name = errno.errorcode.get(errno_of(exc), "EIO")
                self.fabric.oplog.set_reply(key, f"error: {name}: {exc}")
                raise
            except Exception as exc:  # a bug: the guard logs it; the ctl still answers
                self.fabric.oplog.set_reply(
                    key, f"error: EIO: internal error: {type(exc).__name__}: {exc}")
                raise
            self.fabric.oplog.set_reply(key, f"ok: {reply}")
            return len(buf)

    async def flush(self, fh):
        handle = self._files[fh]
        with self._guard("close", handle.path, handle.subject):
            await handle.commit_if_dirty()

    async def fsync(self, fh, datasync):
        handle = self._files[fh]
        with self._guard("fsync", handle.path, handle.subject):
            await handle.commit_if_dirty()
            await trio.to_thread.run_sync(self.fabric.meta.sync)

    async def release(self, fh):
        handle = self._files.pop(fh)
        self.fabric.budget.give_back(handle.uid, handle.reserved)
        writers = self._writers.get(handle.ino)
        if writers is not None:
            writers.discard(fh)
            if not writers:
                del self._writers[handle.ino]
        try:
            with self._guard("release", handle.path, handle.subject):
                if handle.refused is None:  # else close() has said why already
                    await handle.commit_if_dirty(closing=True)
        except pyfuse3.FUSEError:
            pass  # release errors never reach the caller; the reason is in the log
        if handle.imports and not any(
            h.scratch is handle.scratch for h in self._files.values()
        ):
            parent, leaf = handle.path[:-1], handle.path[-1]
            if self.fabric.scratch.find(parent, leaf) is handle.scratch:
                self.fabric.scratch.remove(parent, leaf)

    # -- extended attributes: circuit metadata as user.qfs.*, pins on versions -----------

    def _version_of(self, inode: int) -> tuple[str, int] | None:
        """(circuit, n) when the inode is a vN.qasm, whose one attribute is the pin."""
        path = self.inodes.path(inode)
        version = routes.parse_version_file(path[2]) if len(path) == 3 else None
        if version is None or path[0] != routes.CIRCUITS or version[1] != "qasm":
            return None
        return path[1], version[0]

    def _pinned(self, circuit: str, n: int) -> bool:
        return n in self.fabric.circuits.get(circuit).meta.get("pinned", ())

    def _circuit_of(self, inode: int) -> str:
        path = self.inodes.path(inode)
        if len(path) != 2 or path[0] != routes.CIRCUITS:
            raise NotFound("no such attribute here (user.qfs.* live on circuit directories)")
        self.fabric.circuits.get(path[1])
        return path[1]

    @staticmethod
    def _field(name: bytes, missing: int = pyfuse3.ENOATTR) -> str:
        """The metadata field an xattr name stands for; other names get `missing`."""
        text = _name(name)
        field = text[len(XATTR_PREFIX):] if text.startswith(XATTR_PREFIX) else ""
        if field not in (*XATTR_FIELDS, "created"):
            raise pyfuse3.FUSEError(missing)
        return field

    async def getxattr(self, inode, name, ctx):
        with self._guard("getxattr"):
            version = self._version_of(inode)
            if version is not None:
                if _name(name) != PINNED or not self._pinned(*version):
                    raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
                return b"1"
            field = self._field(name)
            circuit = self.fabric.circuits.get(self._circuit_of(inode))
            meta = json.loads(CircuitStore.meta_json(circuit))
            if field not in circuit.meta and field != "created":
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            value = meta[field]
            if field == "tags":
                return ",".join(value).encode()
            return (value if isinstance(value, str) else json.dumps(value)).encode()

    async def listxattr(self, inode, ctx):
        with self._guard("listxattr"):
            version = self._version_of(inode)
            if version is not None:
                return [PINNED.encode()] if self._pinned(*version) else []
            path = self.inodes.path(inode)
            if len(path) != 2 or path[0] != routes.CIRCUITS:
                return []
            circuit = self.fabric.circuits.get(path[1])
            present = [f for f in XATTR_FIELDS if f in circuit.meta]
            return [f"{XATTR_PREFIX}{f}".encode() for f in (*present, "created")]

    async def setxattr(self, inode, name, value, ctx):
        with self._guard("setxattr"):
            version = self._version_of(inode) if _name(name) == PINNED else None
            if version is not None:
                if value not in (b"0", b"1"):
                    raise Invalid(f"{PINNED} is 1 (keep this version beyond retention) or 0")
                self.fabric.circuits.pin(*version, value == b"1")
                return
            # ENOTSUP tells tools such as sed -i and vim that ACLs are not kept here.
            field = self._field(name, missing=errno.ENOTSUP)
            circuit = self._circuit_of(inode)
            if field == "created":
                self._set_created(circuit, value)
                return
            parsed = _xattr_value(field, value)
            self.fabric.circuits.update_meta(circuit, lambda meta: {**meta, field: parsed})

    def _set_created(self, circuit: str, value: bytes) -> None:
        """user.qfs.created is read-only, but cp -a writes it back, into a circuit it is
        filling (the circuit keeps its creation time) or unchanged."""
        created = parse_iso(value.decode(errors="replace"))
        fill = self.fabric.circuits.filling(circuit)
        if fill is not None and fill.fresh:
            self.fabric.circuits.set_created(circuit, created)
        elif created // 10**9 != self.fabric.circuits.get(circuit).created_ns // 10**9:
            raise ReadOnly("user.qfs.created is read-only")

    async def removexattr(self, inode, name, ctx):
        with self._guard("removexattr"):
            version = self._version_of(inode)
            if version is not None:
                if _name(name) != PINNED or not self._pinned(*version):
                    raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
                self.fabric.circuits.pin(*version, False)
                return
            field = self._field(name)
            circuit = self._circuit_of(inode)
            if field not in self.fabric.circuits.get(circuit).meta:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            self.fabric.circuits.update_meta(
                circuit, lambda meta: {k: v for k, v in meta.items() if k != field}
            )


def _xattr_value(field: str, value: bytes) -> Any:
    """user.qfs.tags is comma-separated, parameters is JSON, the rest plain UTF-8 text."""
    try:
        text = value.decode()
    except UnicodeDecodeError as exc:
        raise Invalid(f"user.qfs.{field} must be UTF-8") from exc
    if field == "tags":
        return [t.strip() for t in text.split(",") if t.strip()]
    if field == "parameters":
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise Invalid(f"user.qfs.parameters must be a JSON object: {exc}") from exc
        if not isinstance(parsed, dict):
            raise Invalid("user.qfs.parameters must be a JSON object")
        return parsed
    return text


def _command_line(buf: bytes) -> str:
    try:
        return bytes(buf).decode()
    except UnicodeDecodeError as exc:
        raise Invalid("commands are UTF-8 text") from exc
