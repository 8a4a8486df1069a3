"""The blob store seam: content-addressed bytes in a directory (S3-compatible later).

A blob is written to a temporary file, fsynced and renamed into place, so a crash leaves
either the whole blob or none of it; names are the SHA-256 of the content. Identical
content is one file: whoever deletes decides from the metadata that no other record still
names the key (levels/states.py). A key is checked to be a hex digest before it becomes a
path, since it comes from the metadata store, which a damaged or edited record can hold
anything in.
"""

import hashlib
import os
import re
from pathlib import Path

from levels.errors import Corrupt, NoSpace, NotFound

_KEY = re.compile(r"[0-9a-f]{64}")


def is_key(key: object) -> bool:
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


class DirectoryBlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not is_key(key):
            raise Corrupt(f"blob key {key!r} is not a SHA-256 hex digest: the metadata "
                          "record was damaged or edited (qfsmount --check reports it)")
        return self._root / key[:2] / key

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if path.exists():
            return key
        path.parent.mkdir(exist_ok=True)
        temp = path.with_name(f".{key}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise NoSpace(f"the blob store is full: {exc}") from exc
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {key} is missing from the store") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self) -> list[str]:
        return sorted(p.name for p in self._root.glob("??/*") if is_key(p.name))
