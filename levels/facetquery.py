"""Answering structured search queries from the facets index (levels/facets.py).

A parsed Whoosh query made only of tags, gates, qubits, depth and name terms, numeric
ranges, AND, OR and NOT becomes a plan over ordered postings: each part lists its names in
name order a chunk at a time (`chunk`), narrows a sorted list of names to those it matches
(`keep`: one range scan between the first and the last, or a point read per name when the
part is much denser than the list) and bounds how many it matches (`size`, from counts).
An AND lists its smallest part and narrows by the others, an OR merges its parts' chunks,
so a query stops after the first `limit` names in name order (what the Whoosh path returns
after sorting) and costs time linear in the names it returns, not in the collection. A
query with any text part (words in the name, description or author) gets no plan: Whoosh
answers it.
"""

from typing import Protocol

from whoosh import fields, query

from levels import facets
from levels.store.meta import Txn

EVERYTHING = 1 << 62  # the size bound of a part that may match every circuit
CHUNK = 1024  # names a query's leading part lists at a time
PROBE_ABOVE = 2  # test names by point reads when a part is this many times denser
MERGED_VALUES = 64  # a range over more values lists every name and reads its value


class Plan(Protocol):
    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        """Matches among the next `count` candidates from `start` on, in name order, and
        where to go on (None: no more)."""
        ...

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        """Those of the sorted `names` that match, by point reads (`probe`) or by scanning
        the part's names between the first and the last."""
        ...

    def size(self, txn: Txn) -> int: ...


def _after(names: list[bytes], count: int) -> bytes | None:
    return names[-1] + b"\0" if len(names) >= count else None


class _Term:
    def __init__(self, field: str, term: str | int) -> None:
        self.field, self.term = field, term

    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        names = facets.postings(txn, self.field, self.term, start, count)
        return names, _after(names, count)

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        if self.size(txn) >= facets.total(txn):  # every circuit holds it (gate:measure)
            return names
        if probe or not names:
            return facets.holding(txn, self.field, self.term, names)
        held = facets.postings_between(txn, self.field, self.term, names[0], names[-1])
        return [name for name in names if name in held]

    def size(self, txn: Txn) -> int:
        return facets.count(txn, self.field, self.term)


class _Range:
    """A number between bounds: the postings of each value present, merged; a name is
    tested by reading its value."""

    def __init__(self, field: str, low: int | None, high: int | None,
                 low_excluded: bool, high_excluded: bool) -> None:
        self.field = field
        self.low, self.high = low, high
        self.low_excluded, self.high_excluded = low_excluded, high_excluded

    def _inside(self, value: int | None) -> bool:
        if value is None:
            return False
        above = self.low is None or value > self.low or (value == self.low
                                                          and not self.low_excluded)
        below = self.high is None or value < self.high or (value == self.high
                                                            and not self.high_excluded)
        return above and below

    def _terms(self, txn: Txn) -> list[_Term]:
        return [_Term(self.field, v) for v, _ in facets.numbers(txn, self.field)
                if self._inside(v)]

    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        terms = self._terms(txn)
        if len(terms) <= MERGED_VALUES:
            return _Or(list(terms)).chunk(txn, start, count)
        # Many values (depth:>5 over a varied collection): a seek per value per chunk would
        # cost more than reading the next names and each one's value.
        names, resume = _All().chunk(txn, start, count)
        return self.keep(txn, names, True), resume

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        if self.size(txn) >= facets.total(txn):
            return names
        found = facets.values(txn, self.field, names)
        return [name for name, value in zip(names, found, strict=True) if self._inside(value)]

    def size(self, txn: Txn) -> int:
        return sum(n for v, n in facets.numbers(txn, self.field) if self._inside(v))


class _Name:
    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        present = self.name >= start and txn.get("names", self.name) is not None
        return ([self.name] if present else []), None

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        return [name for name in names if name == self.name]

    def size(self, txn: Txn) -> int:
        return 1


class _All:
    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        names = txn.keys("names", start, facets.STOP, count)
        return names, _after(names, count)

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        return names  # every name asked about is a circuit's

    def size(self, txn: Txn) -> int:
        return EVERYTHING


class _Nothing:
    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        return [], None

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        return []

    def size(self, txn: Txn) -> int:
        return 0


class _And:
    """Names of the smallest positive part that every other part holds and no negated part
    does (no positive part: every circuit)."""

    def __init__(self, positive: list[Plan], negative: list[Plan]) -> None:
        self.positive = positive or [_All()]
        self.negative = negative

    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        sized = sorted(((p.size(txn), i, p) for i, p in enumerate(self.positive)),
                       key=lambda entry: entry[:2])
        lead_size, _, lead = sized[0]
        names, resume = lead.chunk(txn, start, count)
        return self._filter(txn, names, [p for _, _, p in sized[1:]], lead_size), resume

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        return self._filter(txn, names, self.positive, 0 if probe else EVERYTHING)

    def _filter(self, txn: Txn, names: list[bytes], parts: list[Plan], lead: int) -> list[bytes]:
        """Narrow `names` by each part, the sparsest first; a part much denser than what
        is left is tested name by name rather than scanned."""
        for part in parts:
            if names:
                names = part.keep(txn, names, part.size(txn) > PROBE_ABOVE * max(lead, 1))
        for part in self.negative:
            if names:
                drop = set(part.keep(txn, names, part.size(txn) > PROBE_ABOVE * max(lead, 1)))
                names = [name for name in names if name not in drop]
        return names

    def size(self, txn: Txn) -> int:
        return min(p.size(txn) for p in self.positive)


class _Or:
    """The merged names of its parts, up to the first place where one part must go on."""

    def __init__(self, parts: list[Plan]) -> None:
        self.parts = parts

    def chunk(self, txn: Txn, start: bytes, count: int) -> tuple[list[bytes], bytes | None]:
        """Each part lists its share of `count` (by its size), so that the parts reach
        about the same name and little of what they list lies past where the first stops."""
        found: set[bytes] = set()
        resume: bytes | None = None
        sizes = [part.size(txn) for part in self.parts]
        whole = max(sum(sizes), 1)
        for part, size in zip(self.parts, sizes, strict=True):
            names, after = part.chunk(txn, start, max(16, count * size * 5 // (whole * 4)))
            found.update(names)
            if after is not None and (resume is None or after < resume):
                resume = after
        merged = sorted(found)
        return (merged if resume is None else [n for n in merged if n < resume]), resume

    def keep(self, txn: Txn, names: list[bytes], probe: bool) -> list[bytes]:
        held: set[bytes] = set()
        for part in self.parts:
            held.update(part.keep(txn, [n for n in names if n not in held], probe))
        return [name for name in names if name in held]

    def size(self, txn: Txn) -> int:
        return min(EVERYTHING, sum(p.size(txn) for p in self.parts))


class Unanswerable(Exception):
    """A part the facets do not index (text): Whoosh answers the query."""


def plan(parsed: query.Query, schema: fields.Schema) -> Plan | None:
    """The plan of a parsed query, or None when it has a part only Whoosh can answer."""
    try:
        return _plan(parsed, schema)
    except Unanswerable:
        return None


def _plan(q: query.Query, schema: fields.Schema) -> Plan:
    if q is query.NullQuery:
        return _Nothing()
    kind = type(q)
    if kind is query.Term:
        return _term(q.fieldname, q.text, schema)
    if kind is query.NumericRange and q.fieldname in facets.NUMBERS:
        return _Range(q.fieldname, q.start, q.end, q.startexcl, q.endexcl)
    if kind is query.Every and q.fieldname in (None, "name", *facets.NUMBERS):
        return _All()
    if kind is query.Not:
        return _And([], [_plan(q.query, schema)])
    if kind is query.And or kind is query.Require:
        parts = q.subqueries if kind is query.And else [q.a, q.b]
        positive, negative = [], []
        for part in parts:
            if type(part) is query.Not:
                negative.append(_plan(part.query, schema))
            else:
                positive.append(_plan(part, schema))
        return _And(positive, negative)
    if kind is query.AndNot:
        return _And([_plan(q.a, schema)], [_plan(q.b, schema)])
    if kind is query.AndMaybe:  # the optional part only scores
        return _plan(q.a, schema)
    if kind is query.Or and getattr(q, "minmatch", 0) in (0, None, 1):
        return _Or([_plan(part, schema) for part in q.subqueries])
    raise Unanswerable(repr(q))


def _term(field: str, text: str | bytes, schema: fields.Schema) -> Plan:
    if field == "name":
        return _Name(str(text))
    if field in facets.NUMBERS:
        return _Term(field, schema[field].from_bytes(text) if isinstance(text, bytes)
                     else int(text))
    if field in facets.KEYWORDS:
        term = text.decode() if isinstance(text, bytes) else text
        return _Term(field, term) if facets.indexable(term) else _Nothing()
    raise Unanswerable(field)


def answer(txn: Txn, parts: Plan, limit: int) -> list[str]:
    """The first `limit` names in name order."""
    out: list[bytes] = []
    start: bytes | None = b""
    while start is not None and len(out) < limit:
        names, start = parts.chunk(txn, start, min(CHUNK, limit - len(out)))
        out += names
    if not out:
        return []
    return b"\n".join(out[:limit]).decode().split("\n")  # names hold no newline
