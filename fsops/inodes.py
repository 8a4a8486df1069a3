"""Inode numbers for paths, with the kernel's lookup counts.

The tree is virtual, so an inode is a name for a path during this mount. Numbers are never
reused within a mount. When a path stops meaning what the kernel cached (a circuit deleted
or renamed over), it is detached: the old inode keeps resolving for open files until the
kernel forgets it, and the next lookup of the path gets a fresh number, so no stale page
cache or attributes can leak into a new object of the same name.
"""

import pyfuse3

from levels.errors import NotFound

Path = tuple[str, ...]
ROOT: Path = ()


class InodeTable:
    def __init__(self) -> None:
        self._path_of: dict[int, Path] = {pyfuse3.ROOT_INODE: ROOT}
        self._ino_of: dict[Path, int] = {ROOT: pyfuse3.ROOT_INODE}
        self._children: dict[Path, set[str]] = {}
        self._lookups: dict[int, int] = {}
        self._next = pyfuse3.ROOT_INODE + 1

    def path(self, ino: int) -> Path:
        try:
            return self._path_of[ino]
        except KeyError:
            raise NotFound(f"inode {ino} is no longer known") from None

    def ino(self, path: Path) -> int:
        """The inode of a path, assigning one if needed (no lookup reference taken)."""
        ino = self._ino_of.get(path)
        if ino is None:
            ino = self._assign(path)
            if path:
                self._add_child(path[:-1], path[-1])
        return ino

    def child_ino(self, parent: Path, name: str) -> int:
        """ino() of `name` in `parent`, for each entry of a listing: a new child's parent
        is not sliced back out of its path."""
        path = (*parent, name)
        ino = self._ino_of.get(path)
        if ino is None:
            ino = self._assign(path)
            self._add_child(parent, name)
        return ino

    def _assign(self, path: Path) -> int:
        ino = self._next
        self._next += 1
        self._ino_of[path] = ino
        self._path_of[ino] = path
        return ino

    def _add_child(self, parent: Path, name: str) -> None:
        siblings = self._children.get(parent)
        if siblings is None:
            siblings = self._children[parent] = set()
        siblings.add(name)

    def known(self, path: Path) -> int | None:
        """The inode of a path the kernel may have been given, or None."""
        return self._ino_of.get(path)

    def remember(self, path: Path) -> int:
        """The inode of a path, with one more kernel lookup reference (lookup, readdirplus)."""
        ino = self.ino(path)
        self.referenced(ino)
        return ino

    def referenced(self, ino: int) -> None:
        """One more kernel lookup reference to a known inode (readdirplus, once replied)."""
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, count: int) -> None:
        left = self._lookups.get(ino, 0) - count
        if left > 0:
            self._lookups[ino] = left
            return
        self._lookups.pop(ino, None)
        path = self._path_of.pop(ino, None)
        if path is not None and self._ino_of.get(path) == ino:
            del self._ino_of[path]
            if path:
                siblings = self._children.get(path[:-1])
                if siblings is not None:
                    siblings.discard(path[-1])
                    if not siblings:
                        del self._children[path[:-1]]

    def detach(self, path: Path) -> None:
        """Make `path` and everything under it get fresh inodes on their next lookup."""
        for name in list(self._children.pop(path, ())):
            self.detach((*path, name))
        if self._ino_of.pop(path, None) is not None and path:
            siblings = self._children.get(path[:-1])
            if siblings is not None:
                siblings.discard(path[-1])

    def move(self, old: Path, new: Path) -> None:
        """After a rename: old's inode (and its subtree) now live at new; new's are detached."""
        self.detach(new)
        self._move(old, new)

    def _move(self, old: Path, new: Path) -> None:
        for name in list(self._children.pop(old, ())):
            self._move((*old, name), (*new, name))
        ino = self._ino_of.pop(old, None)
        if old:
            siblings = self._children.get(old[:-1])
            if siblings is not None:
                siblings.discard(old[-1])
        if ino is not None:
            self._ino_of[new] = ino
            self._path_of[ino] = new
            self._add_child(new[:-1], new[-1])

    def __len__(self) -> int:
        return len(self._path_of)
