"""The structured secondary index of circuits (tags, gates, qubits, depth) in the metadata store.

Whoosh answers `qubits:[2 TO 5]` at 100,000 circuits in about a second; ordered keys in the
metadata store answer it in time linear in the names returned. Every row lives in the
`facets` table and is written in the same transaction as the circuit record it derives from,
so the index is never behind or ahead of the circuits (a search needs no wait for a commit).
Only range scans and point reads are used, so any `MetaStore` serves it.

Rows (names sort after their term, so one prefix scan lists a term's circuits in name order):

    p + field + 0 + term + 0 + name   -> b""     posting of a keyword (tags, gates)
    p + field + 0 + number(8) + name  -> b""     posting of a number (qubits, depth)
    N + field + 0 + name              -> number(8) a circuit's value of a number field
    n + field + 0 + term or number    -> count   circuits per term, 8 bytes little-endian
    f + name                          -> JSON    the circuit's indexed terms (to diff updates)
    c                                 -> count   circuits indexed
    v                                 -> VERSION the layout; another value means rebuild

Terms are normalized as the Whoosh schema does (tags split at commas and stripped, gates at
white space, both lowercased), so both indexes agree on what `tag:X` means.
"""

import json
import re
import struct
from collections.abc import Iterable
from typing import Any

from levels.store.meta import Txn

TABLE = "facets"
VERSION = b"3"
KEYWORDS = ("tags", "gates")
NUMBERS = ("qubits", "depth")
_COUNT = struct.Struct("<q")
_NUMBER = struct.Struct(">Q")
_OFFSET = 1 << 63  # numbers stored biased, so big-endian bytes sort as signed values
_COMMA_TERMS = re.compile(r"[^,]+")
_SPACE_TERMS = re.compile(r"[^ \t\r\n]+")

Terms = dict[str, Any]  # field -> sorted list of terms (keywords) or int (numbers)


def terms_of(doc: dict[str, Any]) -> Terms:
    """The indexed terms of a search document, normalized as Whoosh's analyzers do."""
    tags = {t.strip().lower() for t in _COMMA_TERMS.findall(",".join(doc.get("tags", [])))}
    gates = {g.lower() for g in _SPACE_TERMS.findall(" ".join(doc.get("gates", [])))}
    return {"tags": sorted(t for t in tags if indexable(t)),
            "gates": sorted(g for g in gates if indexable(g)),
            "qubits": int(doc.get("qubits", 0)), "depth": int(doc.get("depth", 0))}


def indexable(term: str) -> bool:
    """A term with NUL would run into the name in its key; no path can ask for one."""
    return bool(term) and "\0" not in term


def number_bytes(value: int) -> bytes:
    return _NUMBER.pack(value + _OFFSET)


def number_of(raw: bytes) -> int:
    return _NUMBER.unpack(raw)[0] - _OFFSET


def term_prefix(field: str, term: str | int) -> bytes:
    """The key prefix of a term's postings: a prefix scan lists its circuits by name."""
    if field in NUMBERS:
        return b"p" + field.encode() + b"\0" + number_bytes(int(term))
    return b"p" + field.encode() + b"\0" + term.encode() + b"\0"  # type: ignore[union-attr]


def _count_key(field: str, term: str | int) -> bytes:
    value = number_bytes(int(term)) if field in NUMBERS else str(term).encode()
    return b"n" + field.encode() + b"\0" + value


def value_key(field: str, name: bytes) -> bytes:
    return b"N" + field.encode() + b"\0" + name


def _pairs(terms: Terms) -> set[tuple[str, str | int]]:
    pairs: set[tuple[str, str | int]] = {(f, t) for f in KEYWORDS for t in terms[f]}
    return pairs | {(f, terms[f]) for f in NUMBERS}


def update(txn: Txn, name: str, doc: dict[str, Any] | None) -> None:
    """Index a circuit's document (None: remove it), in the transaction that changes it;
    only the rows of terms that changed are written (a write that changes no indexed term,
    such as a version's time, costs one read)."""
    forward = b"f" + name.encode()
    raw = txn.get(TABLE, forward)
    terms = terms_of(doc) if doc is not None else None
    encoded = json.dumps(terms, separators=(",", ":")).encode() if terms is not None else None
    if encoded == raw:
        return
    old = _pairs(json.loads(raw)) if raw is not None else set()
    new = _pairs(terms) if terms is not None else set()
    changes = [(f, t, -1) for f, t in old - new] + [(f, t, 1) for f, t in new - old]
    count_keys = [_count_key(f, t) for f, t, _ in changes]
    suffix = name.encode()
    for (field, term, delta), key, counted in zip(changes, count_keys,
                                                   txn.get_many(TABLE, count_keys), strict=True):
        posting = term_prefix(field, term) + suffix
        if delta > 0:
            txn.put(TABLE, posting, b"")
            if field in NUMBERS:
                txn.put(TABLE, value_key(field, suffix), number_bytes(int(term)))
        else:
            txn.delete(TABLE, posting)
        remaining = (_COUNT.unpack(counted)[0] if counted else 0) + delta
        if remaining > 0:
            txn.put(TABLE, key, _COUNT.pack(remaining))
        elif counted is not None:
            txn.delete(TABLE, key)
    if encoded is None:
        for field in NUMBERS:
            txn.delete(TABLE, value_key(field, suffix))
        txn.delete(TABLE, forward)
        _add_circuits(txn, -1)
    else:
        txn.put(TABLE, forward, encoded)
        if raw is None:
            _add_circuits(txn, 1)


def _add_circuits(txn: Txn, delta: int) -> None:
    indexed = total(txn) + delta
    if indexed > 0:
        txn.put(TABLE, b"c", _COUNT.pack(indexed))
    else:  # as a rebuild of no circuits leaves it
        txn.delete(TABLE, b"c")


def total(txn: Txn) -> int:
    """How many circuits are indexed."""
    raw = txn.get(TABLE, b"c")
    return _COUNT.unpack(raw)[0] if raw else 0


def current(txn: Txn) -> bool:
    """Whether the table holds this layout (a data directory from before it has none)."""
    return txn.get(TABLE, b"v") == VERSION


def rebuild(txn: Txn, docs: Iterable[dict[str, Any]]) -> int:
    """Replace the whole index with one built from `docs`; returns how many were indexed."""
    for key in [k for k, _ in txn.scan(TABLE)]:
        txn.delete(TABLE, key)
    count = 0
    for doc in docs:
        update(txn, doc["name"], doc)
        count += 1
    txn.put(TABLE, b"v", VERSION)
    return count


def differences(txn: Txn, docs: Iterable[dict[str, Any]]) -> list[str]:
    """What the stored index has that an index built from `docs` would not, and the reverse
    (for `qfsmount --check`); empty when they agree row for row."""
    expected: dict[bytes, bytes] = {b"v": VERSION}
    counts: dict[bytes, int] = {}
    indexed = 0
    for doc in docs:
        indexed += 1
        terms = terms_of(doc)
        name = doc["name"].encode()
        expected[b"f" + name] = json.dumps(terms, separators=(",", ":")).encode()
        for field, term in _pairs(terms):
            expected[term_prefix(field, term) + name] = b""
            if field in NUMBERS:
                expected[value_key(field, name)] = number_bytes(int(term))
            counts[_count_key(field, term)] = counts.get(_count_key(field, term), 0) + 1
    expected.update((key, _COUNT.pack(n)) for key, n in counts.items())
    if indexed:
        expected[b"c"] = _COUNT.pack(indexed)
    stored = dict(txn.scan(TABLE))
    problems = [f"missing {_show(k)}" for k in sorted(expected.keys() - stored.keys())]
    problems += [f"extra {_show(k)}" for k in sorted(stored.keys() - expected.keys())]
    problems += [f"wrong value of {_show(k)}" for k in sorted(expected.keys() & stored.keys())
                 if expected[k] != stored[k]]
    return problems


def _show(key: bytes) -> str:
    """A row key as text: posting/qubits/5/c000, count/gates/cx, terms/c000."""
    kind, rest = {b"p": "posting", b"n": "count", b"N": "value", b"f": "terms",
                  b"v": "version", b"c": "circuits"}.get(key[:1], "?"), key[1:]
    field, _, term = rest.partition(b"\0")
    if kind in ("posting", "count") and field.decode(errors="replace") in NUMBERS:
        shown = f"{number_of(term[:8])}/{term[8:].decode(errors='replace')}"
        return f"{kind}/{field.decode()}/{shown.rstrip('/')}"
    text = rest.replace(b"\0", b"/").decode(errors="replace")
    return f"{kind}/{text}".rstrip("/")


# -- reading: names as bytes, in key order -----------------------------------------------

STOP = b"\xff"  # after every name (names are ASCII) under a prefix


def postings(txn: Txn, field: str, term: str | int, start: bytes, limit: int) -> list[bytes]:
    """Up to `limit` names holding a term, from `start` on, in name order."""
    prefix = term_prefix(field, term)
    cut = len(prefix)
    return [key[cut:] for key in txn.keys(TABLE, prefix + start, prefix + STOP, limit)]


def postings_between(txn: Txn, field: str, term: str | int, low: bytes,
                     high: bytes) -> set[bytes]:
    """Every name holding a term from `low` to `high` inclusive."""
    prefix = term_prefix(field, term)
    cut = len(prefix)
    return {key[cut:] for key in txn.keys(TABLE, prefix + low, prefix + high + b"\0", 1 << 62)}


def holding(txn: Txn, field: str, term: str | int, names: list[bytes]) -> list[bytes]:
    """Those of `names` that hold a term, one point read each."""
    prefix = term_prefix(field, term)
    found = txn.get_many(TABLE, [prefix + name for name in names])
    return [name for name, value in zip(names, found, strict=True) if value is not None]


def values(txn: Txn, field: str, names: list[bytes]) -> list[int | None]:
    """Each name's value of a number field (None: not indexed)."""
    found = txn.get_many(TABLE, [value_key(field, name) for name in names])
    return [None if raw is None else number_of(raw) for raw in found]


def count(txn: Txn, field: str, term: str | int) -> int:
    raw = txn.get(TABLE, _count_key(field, term))
    return _COUNT.unpack(raw)[0] if raw else 0


def numbers(txn: Txn, field: str) -> list[tuple[int, int]]:
    """(value, circuits holding it) for every value of a number field, ascending."""
    prefix = b"n" + field.encode() + b"\0"
    return [(number_of(key[len(prefix):]), _COUNT.unpack(raw)[0])
            for key, raw in txn.scan(TABLE, prefix)]
