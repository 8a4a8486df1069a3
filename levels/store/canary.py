"""A key canary: a known payload sealed with the state key when the data directory was
first used, kept in the metadata store.

Whether the key file still opens it is the one honest answer to "is the key right?": a
key loaded from a file always looks fine, but another key (a `--key-file` from elsewhere,
a restored backup of the key) would make every encrypted checkpoint unreadable. The
health probe unseals the canary each time it is asked.
"""

from levels.errors import Corrupt
from levels.store.meta import MetaStore
from levels.store.sealed import Sealer

_KEY = b"key_canary"
_AAD = b"qfs key canary"
_PAYLOAD = b"qfs: this blob was sealed with the data directory's state key\n"


class KeyCanary:
    def __init__(self, meta: MetaStore, sealer: Sealer) -> None:
        self._meta = meta
        self._sealer = sealer
        with meta.writing() as txn:
            if txn.get("settings", _KEY) is None:
                txn.put("settings", _KEY, sealer.seal(_PAYLOAD, _AAD, encrypt=True))

    def opens(self) -> bool:
        """True when the loaded key opens the canary sealed at the first mount."""
        with self._meta.reading() as txn:
            blob = txn.get("settings", _KEY)
        if blob is None:
            return False
        try:
            return self._sealer.unseal(blob, _AAD) == _PAYLOAD
        except Corrupt:
            return False
