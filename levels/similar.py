"""Structural similarity between circuits: the reference's semantic search, done honestly.

A circuit's shape vector is its gate counts (log-scaled, so one big circuit does not dwarf
every other feature) plus its qubit count and depth; circuits are ranked by the cosine of
their vectors. This finds "circuits built like this one", not circuits that compute the
same thing, and the README says so.
"""

from collections.abc import Iterable
from typing import Any

import numpy as np


def _features(stats: dict[str, Any]) -> dict[str, float]:
    features = {f"gate:{g}": float(np.log1p(c)) for g, c in stats.get("gate_counts", {}).items()}
    features["shape:qubits"] = float(np.log1p(stats.get("num_qubits", 0)))
    features["shape:depth"] = float(np.log1p(stats.get("depth", 0)))
    return features


def rank_similar(
    target: dict[str, Any], candidates: Iterable[tuple[str, dict[str, Any]]], limit: int
) -> list[tuple[str, float]]:
    """(name, cosine) of the `limit` candidates whose shape is closest to `target`'s stats."""
    names: list[str] = []
    rows: list[dict[str, float]] = []
    for name, stats in candidates:
        names.append(name)
        rows.append(_features(stats))
    if not names:
        return []
    query = _features(target)
    vocabulary = sorted(set(query).union(*rows))
    column = {feature: i for i, feature in enumerate(vocabulary)}
    matrix = np.zeros((len(rows), len(vocabulary)))
    for i, row in enumerate(rows):
        for feature, value in row.items():
            matrix[i, column[feature]] = value
    vector = np.zeros(len(vocabulary))
    for feature, value in query.items():
        vector[column[feature]] = value
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(vector) or 1.0)
    scores = np.divide(matrix @ vector, norms, out=np.zeros(len(rows)), where=norms > 0)
    order = np.argsort(-scores, kind="stable")[:limit]
    return [(names[i], float(scores[i])) for i in order if scores[i] > 0]
