"""Scratch files: what editors and tools write beside the fabric's own files.

vim writes swap files and a `4913` probe, sed -i and rsync write a temporary file and rename
it over the target. These are plain files here, kept in memory until they are renamed onto a
fabric file (which commits their content), deleted, or the filesystem is unmounted. They are
never versions. The README documents that they do not survive a remount, so only names
that tools give such files are scratch (`is_scratch_name`); the tree (levels/vfs/entry.py,
`create_scratch_or_target`) refuses other names where the fabric would not keep them.
"""

import dataclasses
import re
import time

from levels.errors import Exists, NotFound

DirKey = tuple[str, ...]
# Names editors and tools give the files they write beside the one they save: dot files
# (vim swap files, rsync and mkstemp temporaries), backups (name~), vim's write probe
# (4913), sed -i temporaries (sedXXXXXX), Python's tempfile names (tmpXXXXXXXX), emacs
# autosaves (#name#), JetBrains' safe-write copies and names ending in .tmp.
_SCRATCH_NAME = re.compile(
    r"^(\..+|.+~|[0-9]+|sed[A-Za-z0-9]{6}|tmp[a-z0-9_]{8}|#.+#|.+___jb_(tmp|old)___|.+\.tmp)$"
)


def is_scratch_name(name: str) -> bool:
    return _SCRATCH_NAME.match(name) is not None


@dataclasses.dataclass
class ScratchFile:
    data: bytearray
    mode: int
    uid: int
    gid: int
    mtime_ns: int = dataclasses.field(default_factory=time.time_ns)

    def touch(self) -> None:
        self.mtime_ns = time.time_ns()


class ScratchFiles:
    def __init__(self) -> None:
        self._dirs: dict[DirKey, dict[str, ScratchFile]] = {}

    def bytes_of(self, uid: int) -> int:
        """What one user's scratch files hold in memory (bounded by levels/budget.py)."""
        return sum(len(f.data) for files in self._dirs.values() for f in files.values()
                   if f.uid == uid)

    def names(self, directory: DirKey) -> list[str]:
        return sorted(self._dirs.get(directory, {}))

    def find(self, directory: DirKey, name: str) -> ScratchFile | None:
        return self._dirs.get(directory, {}).get(name)

    def get(self, directory: DirKey, name: str) -> ScratchFile:
        found = self.find(directory, name)
        if found is None:
            raise NotFound(f"no file {name}")
        return found

    def create(self, directory: DirKey, name: str, mode: int, uid: int, gid: int) -> ScratchFile:
        files = self._dirs.setdefault(directory, {})
        if name in files:
            raise Exists(f"{name} exists")
        files[name] = ScratchFile(bytearray(), mode & 0o7777, uid, gid)
        return files[name]

    def put(self, directory: DirKey, name: str, file: ScratchFile) -> None:
        self._dirs.setdefault(directory, {})[name] = file

    def remove(self, directory: DirKey, name: str) -> ScratchFile:
        files = self._dirs.get(directory, {})
        if name not in files:
            raise NotFound(f"no file {name}")
        found = files.pop(name)
        if not files:
            self._dirs.pop(directory, None)
        return found

    def drop_tree(self, directory: DirKey) -> None:
        for key in [k for k in self._dirs if k[: len(directory)] == directory]:
            del self._dirs[key]

    def move_tree(self, old: DirKey, new: DirKey) -> None:
        for key in [k for k in self._dirs if k[: len(old)] == old]:
            self._dirs[new + key[len(old) :]] = self._dirs.pop(key)
