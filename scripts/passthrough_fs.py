"""A minimal read-only pyfuse3 passthrough filesystem: the baseline for bench_circuitfs.py.

It answers lookup, getattr, readlink, opendir/readdir (with attributes, as pyfuse3 always
serves readdirplus), open/read/release and statfs by asking the source directory, and
nothing more, so that the gap between it and qfs is what qfs itself costs on top of
pyfuse3 + trio + the kernel's FUSE round trips. Attribute and entry timeouts are 1 s, the
value qfs gives directories, so the kernel caches equally much for both.

    python scripts/passthrough_fs.py SOURCE MOUNTPOINT     (foreground; fusermount3 -u ends it)
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import stat
import sys

import pyfuse3
import trio

log = logging.getLogger("passthrough")

TIMEOUT = 1.0  # seconds the kernel may trust an entry or its attributes
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _errors(exc: OSError) -> pyfuse3.FUSEError:
    """An OSError from the source tree, as the errno the kernel should see."""
    return pyfuse3.FUSEError(exc.errno or errno.EIO)


class Passthrough(pyfuse3.Operations):
    """Inode numbers are ours (assigned per path, counted like the kernel's references)."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self._source = os.path.abspath(source)
        self._path_of: dict[int, str] = {pyfuse3.ROOT_INODE: self._source}
        self._ino_of: dict[str, int] = {self._source: pyfuse3.ROOT_INODE}
        self._lookups: dict[int, int] = {}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._files: dict[int, int] = {}  # fh -> OS file descriptor
        self._dirs: dict[int, list[tuple[bytes, str, os.stat_result]]] = {}
        self._next_fh = 1

    # -- inode bookkeeping ---------------------------------------------------------------

    def _path(self, ino: int) -> str:
        try:
            return self._path_of[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _ino(self, path: str) -> int:
        """The inode of a path, assigned on first sight; takes no kernel reference."""
        ino = self._ino_of.get(path)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self._ino_of[path] = ino
            self._path_of[ino] = path
        return ino

    def _remember(self, path: str) -> int:
        """The inode of a path with one more kernel reference (lookup, readdirplus entry)."""
        ino = self._ino(path)
        self._lookups[ino] = self._lookups.get(ino, 0) + 1
        return ino

    def _attrs(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.generation = 0
        attr.entry_timeout = TIMEOUT
        attr.attr_timeout = TIMEOUT
        attr.st_mode = st.st_mode
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    # -- names and attributes ------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._path(parent_inode)
        if name == b".":
            path = parent
        elif name == b"..":
            path = parent if parent == self._source else os.path.dirname(parent)
        else:
            path = os.path.join(parent, os.fsdecode(name))
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise _errors(exc) from None
        return self._attrs(self._remember(path), st)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            left = self._lookups.get(ino, 0) - count
            if left > 0:
                self._lookups[ino] = left
                continue
            self._lookups.pop(ino, None)
            if ino == pyfuse3.ROOT_INODE:
                continue
            path = self._path_of.pop(ino, None)
            if path is not None and self._ino_of.get(path) == ino:
                del self._ino_of[path]

    async def getattr(self, inode, ctx=None):
        try:
            st = os.lstat(self._path(inode))
        except OSError as exc:
            raise _errors(exc) from None
        return self._attrs(inode, st)

    async def readlink(self, inode, ctx):
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as exc:
            raise _errors(exc) from None

    async def statfs(self, ctx):
        vfs = os.statvfs(self._source)
        data = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail"):
            setattr(data, field, getattr(vfs, field))
        data.f_namemax = vfs.f_namemax
        return data

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, inode, ctx):
        """Snapshot the listing with each entry's lstat, so readdir offsets stay stable."""
        path = self._path(inode)
        entries: list[tuple[bytes, str, os.stat_result]] = []
        try:
            with os.scandir(path) as listing:
                for entry in listing:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed between readdir and lstat
                    entries.append((os.fsencode(entry.name), entry.path, st))
        except OSError as exc:
            raise _errors(exc) from None
        entries.sort()
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = entries
        return fh

    async def readdir(self, fh, start_id, token):
        entries = self._dirs[fh]
        for index in range(start_id, len(entries)):
            name, path, st = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attrs(self._ino(path), st),
                                         index + 1):
                return
            self._remember(path)  # an accepted readdirplus entry is a kernel reference

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # -- files ---------------------------------------------------------------------------

    async def open(self, inode, flags, ctx):
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._path(inode)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise _errors(exc) from None
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = fd
        return pyfuse3.FileInfo(fh=fh)

    async def read(self, fh, off, size):
        try:
            return os.pread(self._files[fh], size, off)
        except OSError as exc:
            raise _errors(exc) from None

    async def release(self, fh):
        fd = self._files.pop(fh, None)
        if fd is not None:
            os.close(fd)


async def _serve() -> None:
    """pyfuse3's loop, ended cleanly by SIGTERM/SIGINT as well as by fusermount3 -u."""
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _signum in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Mount SOURCE read-only at MOUNTPOINT and serve in the foreground until unmounted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="directory to mirror")
    parser.add_argument("mountpoint", help="an existing, empty directory")
    parser.add_argument("--debug", action="store_true", help="FUSE debug output on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not os.path.isdir(args.source):
        print(f"passthrough_fs: {args.source} is not a directory", file=sys.stderr)
        return 2
    options = set(pyfuse3.default_options) | {"fsname=passthrough", "subtype=passthrough", "ro"}
    if os.getuid() == 0:
        options.add("allow_other")  # as qfs does when run as root
    if args.debug:
        options.add("debug")
    pyfuse3.init(Passthrough(args.source), args.mountpoint, options)
    try:
        trio.run(_serve)
    except BaseException:
        pyfuse3.close(unmount=False)
        raise
    pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
