"""How much memory files being written may hold: per file, and per user in all.

What a writer sends is buffered in the daemon until close() commits it (a version is
judged whole), so writes are memory the daemon spends on behalf of a user. Without a
bound, one unprivileged user could exhaust the daemon by writing past any size a file may
commit to, by `truncate -s 100G`, or by holding many files open. A write() that would
pass a bound is refused there, before the buffer grows (EFBIG for one file, ENOSPC for a
user's total), so a shell or np.save that ignores close() still sees the refusal.
"""

from collections import Counter

from levels.errors import NoSpace, TooBig

Path = tuple[str, ...]


class WriteBudget:
    def __init__(self, per_user_bytes: int, file_caps: dict[str, tuple[int, str]]) -> None:
        """`file_caps`: the most one file may hold, with the setting that says so, by its
        name (meta.json) or else by the top directory it lies in (the largest thing that
        directory can commit); other directories have no writable files but control
        files, which are not buffered."""
        self.per_user_bytes = per_user_bytes
        self._file_caps = file_caps
        self._held: Counter[int] = Counter()

    def file_cap(self, path: Path) -> tuple[int, str]:
        caps = self._file_caps
        return caps.get(path[-1]) or caps.get(path[0]) or min(caps.values())

    def reserve(self, uid: int, path: Path, size_now: int, size_after: int,
                held_elsewhere: int, keep: bool = True) -> int:
        """Account for a buffer growing from `size_now` to `size_after` bytes; returns the
        bytes reserved (to give back with `give_back`), or refuses with the bound.
        `held_elsewhere` is what the user holds outside this account (scratch files, which
        count themselves: `keep=False` checks a scratch file's growth without keeping it)."""
        grow = size_after - size_now
        if grow <= 0:
            return 0
        cap, setting = self.file_cap(path)
        if size_after > cap:
            raise TooBig(f"/{'/'.join(path)} may hold at most {cap} bytes ({setting}); this "
                         f"write would make it {size_after}")
        held = self._held[uid] + held_elsewhere
        if held + grow > self.per_user_bytes:
            raise NoSpace(f"uid {uid} holds {held} bytes in files being written; this write "
                          f"needs {grow} more, over the limit of {self.per_user_bytes} "
                          "(performance.max_buffered_mb_per_user)")
        if not keep:
            return 0
        self._held[uid] += grow
        return grow

    def give_back(self, uid: int, amount: int) -> None:
        self._held[uid] = max(0, self._held[uid] - amount)
        if not self._held[uid]:
            del self._held[uid]
