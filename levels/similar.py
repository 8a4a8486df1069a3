"""Structural similarity between circuits: the reference's semantic search, done honestly.

A circuit's shape vector is its gate counts (log-scaled, so one big circuit does not dwarf
every other feature) plus its qubit count and depth; circuits are ranked by the cosine of
their vectors. This finds "circuits built like this one", not circuits that compute the
same thing, and the README says so.
"""

from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse


def _features(stats: dict[str, Any]) -> dict[str, float]:
    features = {f"gate:{g}": float(np.log1p(c)) for g, c in stats.get("gate_counts", {}).items()}
    features["shape:qubits"] = float(np.log1p(stats.get("num_qubits", 0)))
    features["shape:depth"] = float(np.log1p(stats.get("depth", 0)))
    return features


KEPT_RANKINGS = 4096  # rankings an index keeps (10 links each): a few MiB at most


class ShapeIndex:
    """Every candidate's shape vector, as one matrix: ranking a circuit against them all is
    then one product. CircuitStore keeps one while the store holds the same data, with the
    rankings made from it, so that `ls -l similar/` (a lookup and a readlink per link) and
    `ls -lR /circuits` rank each circuit once."""

    def __init__(self, candidates: Iterable[tuple[str, dict[str, Any]]]) -> None:
        self.names: list[str] = []
        rows: list[dict[str, float]] = []
        for name, stats in candidates:
            self.names.append(name)
            rows.append(_features(stats))
        self._column = {feature: i for i, feature in enumerate(sorted(set().union(*rows)))}
        # Sparse: every custom gate name is a column, and a corpus of circuits that each
        # define their own would make a dense matrix of circuits squared.
        columns = [self._column[feature] for row in rows for feature in row]
        values = [value for row in rows for value in row.values()]
        starts = np.cumsum([0, *(len(row) for row in rows)])
        self._matrix = scipy.sparse.csr_matrix((values, columns, starts),
                                               shape=(len(rows), len(self._column)))
        self._norms = np.sqrt(np.asarray(self._matrix.multiply(self._matrix).sum(axis=1))
                              ).ravel()
        self._ranked: dict[tuple[str, int], list[tuple[str, float]]] = {}

    def rank(self, target: dict[str, Any], limit: int, exclude: str = "",
             ) -> list[tuple[str, float]]:
        """(name, cosine) of the `limit` candidates other than `exclude` whose shape is
        closest to `target`'s stats, best first (candidates' order breaks ties)."""
        query = _features(target)
        vector = np.zeros(len(self._column))
        for feature, value in query.items():
            if feature in self._column:
                vector[self._column[feature]] = value
        norms = self._norms * (float(np.linalg.norm(list(query.values()))) or 1.0)
        scores = np.divide(self._matrix @ vector, norms, out=np.zeros(len(self.names)),
                           where=norms > 0)
        # Equal shapes can score an ulp apart (the product's summation order): rounded,
        # they tie, and ties keep the candidates' order.
        ranked: list[tuple[str, float]] = []
        for i in np.argsort(-np.round(scores, 12), kind="stable"):
            if len(ranked) == limit or scores[i] <= 0:
                break
            if self.names[i] != exclude:
                ranked.append((self.names[i], float(scores[i])))
        return ranked

    def kept(self, name: str, limit: int) -> list[tuple[str, float]] | None:
        """rank_kept's answer if made already, else None."""
        return self._ranked.get((name, limit))

    def rank_kept(self, name: str, target: dict[str, Any], limit: int,
                  ) -> list[tuple[str, float]]:
        """rank(target, limit, exclude=name), made once per name for this index (whose
        candidates include `name` with `target`, its shape in the same data)."""
        key = (name, limit)
        ranked = self._ranked.get(key)
        if ranked is None:
            if len(self._ranked) >= KEPT_RANKINGS:
                self._ranked.clear()
            ranked = self._ranked[key] = self.rank(target, limit, exclude=name)
        return ranked
